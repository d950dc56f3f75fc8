"""EEG sleep staging on PhysioNet/CinC 2018 (``--task eeg``): Table 3 and Table 4's
time-series column.

Protocol (paper, Section 4 "1D time series classification"): the six EEG channels,
band-passed 0.1-30 Hz and resampled to 100 Hz, 30 s windows (3000 samples),
instance-normalised per window and channel (:mod:`tasks.data.physionet2018`), tokenised
by a linear layer over each 1 s patch's channels x samples (the 1D encoder,
:class:`methods.backbone.PatchEmbed1d`). Pretraining reads the windows of the
``pretrain`` subjects (unlabelled records included); finetuning trains a linear head on
[CLS] over the labelled windows of the ``finetune`` subjects with 20 % of the position
embeddings masked per window (:class:`tasks.classifier.ClassifierModel`); the test
subjects are held out from both. Metric: Cohen's kappa over all test windows
(scikit-learn), with accuracy and macro-F1 beside it.

:class:`EEGTask` splits by subject (:func:`tasks.data.physionet2018.split_subjects`;
counts and ``split_seed`` from the plan's ``eeg`` section, :class:`EEGPlan`); on a root
with too few subjects the run stops naming the counts, unless ``eeg.scale_down``.
:meth:`EEGTask.prepare_data` caches the preprocessed windows under
``<cache>/physionet2018/``: a second run never filters again. ``--protocol``
``finetune``, ``knn`` or ``linear`` (:class:`tasks.frozen.FrozenProtocols`); the frozen
protocols report Cohen's kappa and accuracy (``knn_kappa_cls`` ... ``linear_acc1``).

Details: docs/reference/physionet2018.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.errors import ConfigError, DataError
from engine.plan import DataPlan, EncoderPlan, LoaderPlan, PretrainPlan, _Schedule

from .base import RunnerSamples, Task
from .data.physionet2018 import (EEG_CHANNELS, STAGES, EEGPreprocessing, EEGWindows,
                                 PhysionetCache, PhysionetDataError, build_cache, split_subjects)
from .finetune import finetune_classifier
from .frozen import FrozenData, FrozenProtocols, ProtocolPlan
from .metrics import SleepStagingMetrics  # noqa: F401  (registers the metric the Runner names)
from .protocols import LinearProbePlan

__all__ = ["EEGTask", "EEGPlan", "EEGFinetunePlan"]


@dataclass(frozen=True)
class EEGPlan:
    """The sleep-staging protocol: preprocessing and the subject split (paper values)."""
    low_hz: float = 0.1
    high_hz: float = 30.0
    sfreq: float = 100.0
    window_s: float = 30.0
    channels: tuple = EEG_CHANNELS
    pretrain_subjects: int = 1653
    finetune_subjects: int = 10
    test_subjects: int = 200
    split_seed: int = 0
    scale_down: bool = False          # True: fewer subjects than the counts -> scale them
    cache_workers: int | None = None  # preprocessing processes (None: up to 8)

    def preprocessing(self) -> EEGPreprocessing:
        return EEGPreprocessing(low_hz=self.low_hz, high_hz=self.high_hz, sfreq=self.sfreq,
                                window_s=self.window_s, channels=tuple(self.channels))


@dataclass(frozen=True)
class EEGFinetunePlan(_Schedule):
    """Finetuning on the labelled windows of the finetune subjects. The paper gives 100
    epochs and 20 % masked position embeddings; the optimiser values are DeiT's where
    they apply (AdamW, wd 0.05, cosine to 1e-5, warmup 5, drop path 0.1) and the batch
    256 at lr 5e-4 is our choice. No image augmentation, Mixup or repeated sampling."""
    epochs: int = 100
    global_batch_size: int = 256
    base_lr: float = 5e-4
    lr_reference_batch: int | None = 256
    weight_decay: float = 0.05
    betas: tuple = (0.9, 0.999)
    warmup_epochs: float = 5
    min_lr: float = 1e-5
    layer_decay: float | None = None
    drop_path: float = 0.1
    smoothing: float = 0.0
    pos_embed: bool = True
    pos_embed_mask: float = 0.2
    repeated_aug: int = 1
    grad_accum: int = 1


class EEGTask(FrozenProtocols, Task):
    name = "eeg"
    kind = "sleep_staging"
    metric_names = ("kappa", "acc", "macro_f1")
    sections = {"data": DataPlan, "encoder": EncoderPlan, "pretrain": PretrainPlan,
                "finetune": EEGFinetunePlan, "eeg": EEGPlan, "loader": LoaderPlan,
                "protocol": ProtocolPlan, "probe": LinearProbePlan}
    # the protocols' metrics (FrozenProtocols.protocol_metrics): the paper's kappa first
    finetune_metrics = ("kappa", "acc", "macro_f1")
    finetune_accuracy = "acc"
    frozen_scores = ("kappa", "acc1")

    def __init__(self, plan, cache_root):
        super().__init__(plan, cache_root)
        if plan.encoder.modality != "1d":
            raise ConfigError(f"the eeg task needs a 1D encoder (encoder.modality='1d'), "
                              f"got {plan.encoder.modality!r}")
        self.eeg: EEGPlan = plan.options["eeg"]
        self.init_protocol()
        self._cache: PhysionetCache | None = None
        self._split: dict[str, list[str]] | None = None

    # ---------------------------------------------------------------- data
    def prepare_data(self, log=print) -> None:
        """Generate the embedded records where there is no root, then preprocess every
        record once into the cache (later runs reuse it)."""
        super().prepare_data(log)
        self._cache = self._build_cache(log)

    def _build_cache(self, log) -> PhysionetCache:
        try:
            return build_cache(self.root, self.cache_root / "physionet2018",
                               self.eeg.preprocessing(), workers=self.eeg.cache_workers, log=log)
        except PhysionetDataError as exc:
            raise DataError(str(exc)) from None

    @property
    def cache(self) -> PhysionetCache:
        if self._cache is None:
            raise RuntimeError("EEGTask: call prepare_data() before reading windows")
        return self._cache

    def split(self, log=print) -> dict[str, list[str]]:
        if self._split is None:
            e = self.eeg
            counts = {"pretrain": e.pretrain_subjects, "finetune": e.finetune_subjects,
                      "test": e.test_subjects}
            try:
                self._split = split_subjects(self.cache.records, counts, e.split_seed,
                                             e.scale_down, log=log)
            except PhysionetDataError as exc:
                raise DataError(str(exc)) from None
        return self._split

    def check_data(self) -> None:
        from .data.physionet2018 import check_physionet_root

        try:
            check_physionet_root(self.root)
        except PhysionetDataError as exc:
            raise DataError(str(exc)) from None
        if self._cache is not None:
            self.split()

    #: 30 s windows of one record where none is counted (assumption: a night of 8 h;
    #: PhysioNet 2018 publishes its record counts, not its lengths)
    WINDOWS_PER_RECORD_ESTIMATE = 960

    @classmethod
    def published_sizes(cls, plan):
        """Windows per epoch estimated from the plan's subject counts (one record each)."""
        e = plan.options["eeg"]
        how = f"estimate: subjects x {cls.WINDOWS_PER_RECORD_ESTIMATE} windows of a night"
        return {"pretrain": (e.pretrain_subjects * cls.WINDOWS_PER_RECORD_ESTIMATE, how),
                "finetune": (e.finetune_subjects * cls.WINDOWS_PER_RECORD_ESTIMATE, how)}

    def train_sizes(self):
        return {"pretrain": None, "finetune": None}  # windows are counted once preprocessed

    def pretrain_dataset(self, views):
        if sum(v.count for v in views) != 1 or any(v.size or v.crop_scale for v in views):
            raise ConfigError("the eeg task gives one view per window (no crops of signals); "
                              f"the method declared {views}")
        return RunnerSamples(EEGWindows(self.cache, self.split()["pretrain"], labelled_only=False))

    def heldout_set(self):
        return EEGWindows(self.cache, self.split()["test"], labelled_only=True)

    def data_summary(self) -> dict:
        """What the record says about the data: subjects and windows per split, skips."""
        split = self.split()
        sizes = {}
        for name, names in split.items():
            ds = EEGWindows(self.cache, names, labelled_only=name != "pretrain")
            sizes[name] = dict(records=len(names), windows=len(ds))
            if name != "pretrain":
                sizes[name]["stages"] = {s: int((ds.labels == i).sum())
                                         for i, s in enumerate(STAGES)}
        return dict(splits=sizes, skipped_records=[list(s) for s in self.cache.skipped],
                    dropped_epochs={k: int(sum(getattr(r, k) for r in self.cache.records))
                                    for k in ("dropped_undefined", "dropped_partial")})

    def labelled_splits(self, log=print) -> tuple[EEGWindows, EEGWindows]:
        """The labelled windows of the finetune subjects and of the test subjects."""
        split = self.split(log)
        train = EEGWindows(self.cache, split["finetune"], labelled_only=True)
        test = EEGWindows(self.cache, split["test"], labelled_only=True)
        if len(train) == 0 or len(test) == 0:
            raise DataError(f"{self.root}: no labelled windows in the finetune or test subjects")
        return train, test

    def frozen_data(self, log=print) -> FrozenData:
        """The finetune subjects' labelled windows (train) and the test subjects' (test);
        their features are keyed by the data's identity, the preprocessing (the cache's
        key), each split's records with their source files' signatures, and the
        normalisation."""
        from .data.fingerprint import data_identity

        train, test = self.labelled_splits(log)
        d = self.plan.data
        records = {name: {r: self.cache.source(r) for r in ds.record_names}
                   for name, ds in (("train", train), ("test", test))}
        return FrozenData(train, test,
                          dict(data=data_identity(d.dataset, d.root, d.embedded),
                               preprocessing=self.cache.prep.key(), records=records,
                               normalize=(train.normalize, test.normalize)),
                          num_classes=len(STAGES))

    # ---------------------------------------------------------------- run
    def run(self, *, pretrained, work_dir, log=print):
        if self.protocol.name != "finetune":
            out = self.frozen(pretrained, work_dir, log)
            labels = self.labelled_splits(log)[1].labels
            out["majority_acc"] = 100.0 * float(np.bincount(labels).max() / len(labels))
            out["data"] = self.data_summary()
            return out
        train, test = self.labelled_splits(log)
        out = finetune_classifier(
            self, pretrained=pretrained, work_dir=work_dir, log=log, train=train, test=test,
            num_classes=len(STAGES), train_labels=train.labels, test_labels=test.labels,
            evaluator="SleepStagingMetrics", metric_names=self.metric_names,
            model_options=dict(mixup=0.0, cutmix=0.0,
                               pos_embed_mask=self.plan.finetune.pos_embed_mask),
            experiment="eeg")
        out["majority_acc"] = 100.0 * float(np.bincount(test.labels).max() / len(test))
        out["data"] = self.data_summary()
        return out
