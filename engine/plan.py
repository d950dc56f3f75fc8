"""The resolved run plan: one typed, frozen description of everything a run does.

A run is (preset, method, task, seed, world size, table-row overrides, command-line
overrides). :func:`resolve_plan` turns it into a :class:`RunPlan` in one place, from
layers in this order (a later layer wins):

    default      the dataclass defaults below (and the method's constructor defaults)
    recipe       a named finetuning recipe (``finetune.recipe``: deit, mae, droppos)
    registry     a variant's own values (``part-grid``: sampling=grid; ``mp3-nope``:
                 finetune.pos_embed=False), from ``methods.METHODS``
    preset       the preset file: ``methods.<base>``, ``methods.<variant>``, ``tasks.<task>``
    task         ``tasks.<task>.method_overrides.<base|variant>`` (e.g. ImageNet's 4802 pairs)
    row          a table row's overrides (``method.num_pairs``, ``pretrain.epochs``)
    command line ``--cfg-options`` (``methods.<name>.<key>``, ``tasks.<task>.<section>.<key>``)

A variant (``part-grid``, ``mp3-nope``) is defined once in the method registry and
inherits every layer of its base method; its own entries sit just above the base's
in the same layer. Every value remembers the layer it came from (``plan.sources``),
which ``--dry-run`` prints. An unknown key at any layer is an error naming the key and
where it was written. Batch sizes are global, as papers state them; the per-process
batch and the learning rate after the preset's scaling rule are derived here.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import os
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = [
    "EncoderPlan", "AugmentPlan", "PretrainPlan", "FinetunePlan", "DetectionFinetunePlan",
    "DetectorPlan", "LoaderPlan", "DataPlan", "EvaluationPlan", "ProtocolPlan", "PROTOCOLS",
    "MethodPlan", "RunPlan",
    "FINETUNE_RECIPES", "PUBLISHED_TRAIN_SIZES", "resolve_plan", "plan_to_dict", "with_step_floor",
    "format_plan", "stable_hash", "iters_per_epoch",
]


# ------------------------------------------------------------------------ sections
@dataclass(frozen=True)
class EncoderPlan:
    arch: str = "vit_base"
    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    modality: str = "2d"

    def as_kwargs(self) -> dict:
        """The keyword arguments of :func:`methods.backbone.build_encoder`."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class AugmentPlan:
    """Pretraining augmentation: random resized crop (+ flip), as MAE's pretraining."""
    rrc_scale: tuple = (0.2, 1.0)
    hflip: bool = True


class _Schedule:
    """Shared derivations of a schedule with a global batch and an lr scaling rule.
    The class attributes are what a schedule without such a field means."""

    layer_decay = None
    lr_steps = None
    grad_clip = None
    repeated_aug = 1
    min_lr = 0.0
    min_steps = None

    def epochs_for(self, iters_per_epoch: int) -> int:
        """The epochs a run takes: ``epochs``, raised where needed so that training takes
        at least ``min_steps`` optimizer steps (``iters_per_epoch`` iterations per epoch,
        one optimizer step per ``grad_accum`` iterations). A small data set then still
        gets the step budget; a large one keeps its epochs. ``min_steps`` None: epochs."""
        if not self.min_steps:
            return int(self.epochs)
        steps_per_epoch = max(1, int(iters_per_epoch)) / max(1, int(self.grad_accum))
        return max(int(self.epochs), math.ceil(int(self.min_steps) / steps_per_epoch))

    def batch_per_process(self, world_size: int) -> int:
        denom = world_size * self.grad_accum
        if self.global_batch_size % denom:
            raise ConfigError(
                f"global batch {self.global_batch_size} does not divide over world size "
                f"{world_size} x grad_accum {self.grad_accum}; choose a global batch that is a "
                f"multiple of {denom}")
        return self.global_batch_size // denom

    @property
    def lr(self) -> float:
        """The learning rate after the scaling rule: base_lr x global batch / reference."""
        if self.lr_reference_batch is None:
            return float(self.base_lr)
        return float(self.base_lr) * self.global_batch_size / self.lr_reference_batch

    @property
    def lr_rule(self) -> str:
        if self.lr_reference_batch is None:
            return f"{self.base_lr:g} (not scaled with the batch)"
        return f"{self.base_lr:g} x {self.global_batch_size} / {self.lr_reference_batch}"


@dataclass(frozen=True)
class PretrainPlan(_Schedule):
    """One pretraining schedule for every method. The paper states epochs, lr 5e-4 and
    batch 1024 (COCO's ImageNet pretraining); weight decay 0.05, betas (0.9, 0.95),
    warmup 40 epochs and RandomResizedCrop(0.2, 1) + flip are MAE's pretraining values,
    our choice where the paper gives none."""
    epochs: int = 400
    global_batch_size: int = 1024
    base_lr: float = 5e-4
    lr_reference_batch: int | None = 1024  # the paper: lr 5e-4 at batch 1024
    weight_decay: float = 0.05
    betas: tuple = (0.9, 0.95)
    warmup_epochs: float = 40
    min_lr: float = 0.0
    grad_accum: int = 1
    augment: AugmentPlan = field(default_factory=AugmentPlan)


@dataclass(frozen=True)
class FinetunePlan(_Schedule):
    """Classification finetuning. The defaults are DeiT's supervised recipe (its
    ``main.py`` defaults): lr 5e-4 x global batch / 512, min lr 1e-5, warmup 5, wd 0.05,
    AdamW's default betas, no layer decay, repeated augmentation (3 repeats), RandAugment
    rand-m9-mstd0.5-inc1, colour jitter 0.4, Mixup 0.8 / CutMix 1.0, smoothing 0.1,
    random erasing 0.25, drop path 0.1. Where we differ (our choices): warmup starts at
    1e-3 of the lr (DeiT: 1e-6), no 10-epoch cooldown at the minimum lr, no model EMA
    (DeiT keeps one but reports the model itself), RandAugment magnitudes capped at 9."""
    recipe: str = "deit"
    epochs: int = 300
    global_batch_size: int = 1024
    base_lr: float = 5e-4
    lr_reference_batch: int | None = 512
    weight_decay: float = 0.05
    betas: tuple = (0.9, 0.999)
    warmup_epochs: float = 5
    min_lr: float = 1e-5
    layer_decay: float | None = None
    drop_path: float = 0.1
    # mmax9: timm's "inc1" posterize reaches 0 bits at magnitude 10, which Pillow rejects
    rand_augment: str | None = "rand-m9-mstd0.5-inc1-mmax9"
    mixup: float = 0.8
    cutmix: float = 1.0
    smoothing: float = 0.1
    reprob: float = 0.25
    rrc_scale: tuple = (0.08, 1.0)
    # inputs of 32 px or less: RandomCrop(size, padding=small_input_pad) instead of the
    # random resized crop, as DeiT's datasets.py build_transform does for CIFAR-size
    # inputs (None: keep the resized crop at every size)
    small_input_pad: int | None = 4
    hflip: float = 0.5
    color_jitter: float = 0.4
    repeated_aug: int = 3            # repeats per sample (1: off)
    eval_crop_pct: float | None = None  # None: 0.875 at >= 224 px, else 1.0
    pos_embed: bool = True           # learnable position embeddings at finetuning
    grad_accum: int = 1
    # a floor in optimizer steps (None: none): epochs are raised on a small data set
    # (``_Schedule.epochs_for``); our addition, DeiT schedules in epochs only
    min_steps: int | None = None


# Named finetuning recipes: the values each sets over the defaults (DeiT). They are a
# layer below the preset, so a preset's epochs/batch hold whichever recipe is chosen.
FINETUNE_RECIPES: dict[str, dict] = {
    "deit": {},
    # MAE's ViT-B finetuning (FINETUNE.md; main_finetune.py's defaults): blr 5e-4 x
    # batch/256, layer decay 0.65, min lr 1e-6, no repeated augmentation; it pools
    # globally, which this suite does not (our choice: [CLS], as PART's paper).
    "mae": dict(base_lr=5e-4, lr_reference_batch=256, layer_decay=0.65, min_lr=1e-6,
                repeated_aug=1),
    # DropPos's ViT-B finetuning (scripts/finetune_base.sh and main_finetune.py's
    # defaults): blr 1e-3 x batch/256, layer decay 0.75, warmup 5, min lr 1e-6, a plain
    # random sampler (no repeated augmentation); it also pools globally.
    "droppos": dict(base_lr=1e-3, lr_reference_batch=256, layer_decay=0.75, min_lr=1e-6,
                    repeated_aug=1),
}


@dataclass(frozen=True)
class DetectionFinetunePlan(_Schedule):
    """ViTDet's Mask R-CNN recipe (MMDetection's ViTDet project config): AdamW lr 1e-4
    at batch 64, betas (0.9, 0.999), wd 0.1, layer decay 0.7, large-scale jitter 0.1-2.0
    with pad 114; the step drops and warmup are fractions of training (its 100-epoch
    schedule: warmup 250, drops at 163889 and 177546 of 184375 iterations)."""
    epochs: int = 12
    global_batch_size: int = 64
    base_lr: float = 1e-4
    lr_reference_batch: int | None = 64
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.999)
    layer_decay: float | None = 0.7
    warmup_epochs: float = 12 * 250 / 184375
    lr_steps: tuple = (163889 / 184375, 177546 / 184375)
    resize_ratio: tuple = (0.1, 2.0)
    hflip: float = 0.5
    pad_val: int = 114
    min_size: int = 32
    test_batch_size: int = 1
    grad_clip: float | None = None
    pos_embed: bool = True
    grad_accum: int = 1
    recipe: str = "vitdet"


@dataclass(frozen=True)
class RpnTrainPlan:
    num: int = 256
    nms_pre: int = 2000
    max_per_img: int = 1000


@dataclass(frozen=True)
class RcnnTrainPlan:
    num: int = 512


@dataclass(frozen=True)
class RpnTestPlan:
    nms_pre: int = 1000
    max_per_img: int = 1000


@dataclass(frozen=True)
class RcnnTestPlan:
    score_thr: float = 0.05
    max_per_img: int = 100


@dataclass(frozen=True)
class DetectorPlan:
    """Mask R-CNN with the ViTDet backbone; defaults are ViTDet's ViT-B at 1024 px."""
    img_size: int = 1024
    window_size: int = 14
    global_blocks: tuple = (2, 5, 8, 11)
    drop_path: float = 0.1
    use_rel_pos: bool = True
    neck_channels: int = 256
    fc_channels: int = 1024
    bbox_convs: int = 4
    bbox_fcs: int = 1
    mask_convs: int = 4
    anchor_scale: int = 8
    scale_factors: tuple = (4.0, 2.0, 1.0, 0.5)
    roi_sampling_ratio: int = 0  # 0: adaptive, as ViTDet
    rpn_train: RpnTrainPlan = field(default_factory=RpnTrainPlan)
    rcnn_train: RcnnTrainPlan = field(default_factory=RcnnTrainPlan)
    rpn_test: RpnTestPlan = field(default_factory=RpnTestPlan)
    rcnn_test: RcnnTestPlan = field(default_factory=RcnnTestPlan)


@dataclass(frozen=True)
class LoaderPlan:
    """How the data reach the device and how a step runs on it; not part of any cache key.

    ``precision``: ``auto`` (bf16 autocast on a GPU with native bfloat16, fp16 with loss
    scaling on an older GPU, fp32 on a CPU), ``bf16``, ``fp16`` or ``fp32``, resolved by
    :func:`engine.runner.build_runner` on the device it trains on
    (:mod:`engine.precision`); the resolved value is in each phase's throughput entry.
    ``compile``: ``torch.compile`` the model's forward inside the Runner (off by default).
    ``log_interval``: iterations between log lines, and between the moments the
    training loop reads losses and stop requests from the device (:mod:`engine.runner`).

    Precision and compile change the rounding of a run, not its recipe: like the device
    and the world size they are left out of the pretrained checkpoint's key, so a cached
    bf16 pretraining is reused by an fp32 run of the same recipe (our choice)."""
    num_workers: int = 8
    log_interval: int = 50
    precision: str = "auto"
    compile: bool = False


@dataclass(frozen=True)
class DataPlan:
    """Where a data set comes from: ``root`` (a real data set) or else ``embedded``
    (the generator's parameters, tiny preset). ``note`` says how it was chosen."""
    dataset: str = "cifar100"
    root: str | None = None
    embedded: dict | None = None
    note: str = ""

    @property
    def missing(self) -> bool:
        return self.root is None and not self.embedded


@dataclass(frozen=True)
class EvaluationPlan:
    """Pretext evaluation on held-out images (the ``pretext`` task)."""
    batch_size: int = 256
    max_images: int = 10000
    eval_seed: int = 1234


def with_step_floor(schedule, sources: dict, section: str):
    """``schedule`` as a run takes it: its ``min_steps`` floor
    (:meth:`_Schedule.epochs_for`) is dropped when a table row or the command line set
    ``<section>.epochs`` and not ``<section>.min_steps``: an explicit epoch count is
    taken as given (our choice)."""
    explicit = ("row", "command line")
    if (getattr(schedule, "min_steps", None) and sources.get(f"{section}.epochs") in explicit
            and sources.get(f"{section}.min_steps") not in explicit):
        return replace(schedule, min_steps=None)
    return schedule


PROTOCOLS = ("finetune", "linear", "knn")


@dataclass(frozen=True)
class ProtocolPlan:
    """How a classification-style task evaluates an encoder (``--protocol``):
    ``finetune`` (every weight trained, the ``finetune`` section), ``linear`` (a linear
    probe on frozen features, the task's ``probe`` section) or ``knn`` (weighted kNN on
    frozen features, ``knn_k`` neighbours, temperature ``knn_temperature``: DINO's 20
    and 0.07). ``batch_size``: images per forward pass when features are extracted."""
    name: str = "finetune"
    knn_k: int = 20
    knn_temperature: float = 0.07
    batch_size: int = 256


@dataclass(frozen=True)
class MethodPlan:
    name: str
    base: str
    cls: str
    config: dict            # the method class's constructor arguments (no encoder)
    pretrains: bool
    version: int = 1        # the method class's code version: a record of another version
                            # is not today's result (tables render it as stale)


@dataclass(frozen=True)
class RunPlan:
    preset: str
    task: str
    kind: str               # classification | pretext | detection
    seed: int
    world_size: int
    method: MethodPlan
    encoder: EncoderPlan
    pretrain: PretrainPlan | None
    finetune: FinetunePlan | DetectionFinetunePlan | None
    detector: DetectorPlan | None
    evaluation: EvaluationPlan | None
    loader: LoaderPlan
    data: DataPlan           # the task's own data
    pretrain_data: DataPlan  # the images pretraining reads
    variant: str
    sources: dict = field(default_factory=dict)  # dotted key -> layer
    options: dict = field(default_factory=dict)  # the task's own sections: name -> dataclass

    def pretrain_batch(self) -> int:
        return self.pretrain.batch_per_process(self.world_size)

    def finetune_batch(self) -> int:
        return self.finetune.batch_per_process(self.world_size)


# Train-split sizes the papers' data sets are published with, for plans made without
# the data (dry runs of the paper preset). COCO: train2017's images with at least one
# annotation, what mmdet's filter_empty_gt keeps (118287 images in all).
PUBLISHED_TRAIN_SIZES = {"cifar100": 50000, "imagenet": 1281167, "coco": 117266}

# The sections every plan has; a task declares which of them its preset entry holds
# (``Task.sections``: name -> dataclass) and may add its own (``plan.options``).
COMMON_SECTIONS = ("data", "encoder", "pretrain", "pretrain_data", "finetune", "detector",
                   "evaluation", "loader", "source")
ROW_SECTIONS = ("method", "pretrain", "finetune", "detector", "encoder", "data", "pretrain_data")


# ------------------------------------------------------------------------ layers
def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; tuples, lists and None are leaves."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def unflatten(flat: dict) -> dict:
    out: dict = {}
    for key, v in flat.items():
        parts = key.split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return out


_UNSET = object()


class Layers:
    """Dotted values with the name of the layer that set each."""

    def __init__(self):
        self.values: dict[str, Any] = {}
        self.sources: dict[str, str] = {}
        self.before: dict[str, Any] = {}  # the value a key had before its latest layer

    def set(self, key: str, value, layer: str) -> None:
        self.before[key] = self.values.get(key, _UNSET)
        # a leaf replaces everything below it, and a value below a leaf replaces the leaf
        for k in [k for k in self.values if k.startswith(key + ".") or key.startswith(k + ".")]:
            del self.values[k]
            self.sources.pop(k, None)
        self.values[key] = value
        self.sources[key] = layer

    def apply(self, d: dict | None, layer: str, prefix: str = "") -> None:
        for k, v in flatten(d or {}).items():
            self.set(prefix + k, v, layer)

    def section(self, name: str) -> tuple[dict, dict]:
        p = name + "."
        vals = {k[len(p):]: v for k, v in self.values.items() if k.startswith(p)}
        srcs = {k: s for k, s in self.sources.items() if k.startswith(p)}
        return unflatten(vals), srcs


def build_section(cls, values: dict, where: str, key: str = "", sources: dict | None = None):
    """The dataclass ``cls`` from ``values``; an unknown key is a ConfigError naming it,
    and so is a value that is not a number where the field's default is one (``key``:
    the section's dotted name, ``sources``: dotted key -> layer, for the message)."""
    names = {f.name: f for f in fields(cls)}
    kwargs = {}
    for k, v in (values or {}).items():
        if k not in names:
            raise ConfigError(f"unknown key {k!r} in {where}; expected one of: "
                              f"{', '.join(sorted(names))}")
        sub = _dataclass_type(names[k])
        dotted = f"{key}.{k}" if key else k
        if sub is not None and isinstance(v, dict):
            v = build_section(sub, v, f"{where}.{k}", dotted, sources)
        elif isinstance(v, list):
            v = tuple(v)
        default = names[k].default
        if (isinstance(default, (int, float)) and not isinstance(default, bool)
                and (not isinstance(v, (int, float)) or isinstance(v, bool))):
            raise ConfigError(f"{dotted} must be a number, got {v!r} (set at "
                              f"{(sources or {}).get(dotted, 'default')}; {where})")
        kwargs[k] = v
    return cls(**kwargs)


def _check_values(plan_sections: dict, sources: dict, where: str) -> None:
    """Ranges no run can train with, each a ConfigError naming the value and its layer."""
    def bad(key, v, expected):
        raise ConfigError(f"{key} must be {expected}, got {v!r} (set at "
                          f"{sources.get(key, 'default')}; {where})")

    def whole(v):
        return isinstance(v, int) and not isinstance(v, bool)

    for name in ("pretrain", "finetune"):
        sched = plan_sections.get(name)
        if sched is None:
            continue
        for k in ("epochs", "global_batch_size", "grad_accum"):
            v = getattr(sched, k)
            if not whole(v) or v < 1:
                bad(f"{name}.{k}", v, "an integer >= 1")
        for k in ("base_lr", "weight_decay", "warmup_epochs", "min_lr"):
            v = getattr(sched, k)
            if v < 0:
                bad(f"{name}.{k}", v, ">= 0")
    loader = plan_sections.get("loader")
    if loader is not None:
        from .precision import PRECISIONS

        if loader.precision not in PRECISIONS:
            bad("loader.precision", loader.precision, f"one of {', '.join(PRECISIONS)}")
        if not isinstance(loader.compile, bool):
            bad("loader.compile", loader.compile, "true or false")
        if not whole(loader.log_interval) or loader.log_interval < 1:
            bad("loader.log_interval", loader.log_interval, "an integer >= 1")
    enc = plan_sections["encoder"]
    for k in ("img_size", "patch_size", "in_chans"):
        v = getattr(enc, k)
        if not whole(v) or v < 1:
            bad(f"encoder.{k}", v, "an integer >= 1")
    if enc.img_size % enc.patch_size:
        raise ConfigError(f"encoder.img_size {enc.img_size} is not a multiple of encoder.patch_size "
                          f"{enc.patch_size} (set at {sources.get('encoder.img_size', 'default')} / "
                          f"{sources.get('encoder.patch_size', 'default')}; {where}): choose a "
                          f"patch size that divides the input")


def _check_method(cls, method: str, task: str, preset: str, encoder, config: dict,
                  sources: dict) -> None:
    """Build the method once on the meta device (no memory, no init cost): every check its
    constructor makes (pair counts, mask ratios, a sampling that needs 2D images, ...)
    answers at plan time, ``--dry-run`` included, as one ConfigError line."""
    import torch

    try:
        with torch.device("meta"):
            cls(encoder=encoder.as_kwargs(), **config)
    except ValueError as exc:
        given = [f"{k}={v!r} [{sources[f'method.{k}']}]" for k, v in config.items()
                 if sources.get(f"method.{k}", "default") != "default"]
        raise ConfigError(f"method {method!r} does not apply to task {task} ({preset}): {exc} "
                          f"(method values: {', '.join(given) or 'defaults'}; encoder: "
                          f"{encoder.modality}, input {encoder.img_size}, patch "
                          f"{encoder.patch_size})") from None


def _dataclass_type(f):
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return type(default) if is_dataclass(default) else None


def _check_keys(d: dict, allowed, where: str) -> None:
    for k in (d or {}):
        if k not in allowed:
            raise ConfigError(f"unknown key {k!r} in {where}; expected one of: "
                              f"{', '.join(sorted(allowed))}")


# ------------------------------------------------------------------------ resolution
def task_class(task: str, tasks_cfg: dict):
    from tasks import TASKS

    if task not in TASKS or task not in tasks_cfg:
        known = sorted(set(TASKS) & set(tasks_cfg))
        raise ConfigError(f"unknown task {task!r}; expected one of: {', '.join(known)}")
    return TASKS[task]


def task_kind(task: str, tasks_cfg: dict) -> str:
    return task_class(task, tasks_cfg).kind


def task_sections(task: str, tasks_cfg: dict) -> dict:
    """The sections the task's preset entry may hold (declared by the task class)."""
    return task_class(task, tasks_cfg).sections


def resolve_plan(cfg: dict, method: str, task: str, *, seed: int = 0, world_size: int | None = None,
                 data_root=None, row: dict | None = None, cli_methods: dict | None = None,
                 cli_tasks: dict | None = None) -> RunPlan:
    """The plan of one run (see the module docstring for the layer order).

    ``cfg`` is the preset as loaded by :func:`engine.config.load_preset` (without the
    command line); ``cli_methods``/``cli_tasks`` are the command line's
    ``methods.*``/``tasks.*`` options; ``row`` a table row's dotted overrides.
    """
    from methods import METHODS, method_entry

    try:
        entry = method_entry(method)
    except KeyError as exc:
        raise ConfigError(exc.args[0]) from None
    base = entry.base or method
    world_size = int(world_size or os.environ.get("WORLD_SIZE", "1"))
    tasks_cfg = cfg.get("tasks", {})
    kind = task_kind(task, tasks_cfg)
    preset = cfg.get("preset", "?")
    cli_methods, cli_tasks, row = cli_methods or {}, cli_tasks or {}, row or {}
    for name in cli_methods:
        if name not in METHODS:
            raise ConfigError(f"unknown method {name!r} in --cfg-options methods.{name}; "
                              f"expected one of: {', '.join(sorted(METHODS))}")
    for name in cli_tasks:
        task_kind(name, tasks_cfg)

    # the task whose sections hold encoder/pretraining/data (pretext: its source)
    own = dict(tasks_cfg[task])
    _check_keys(own, set(task_sections(task, tasks_cfg)) | {"method_overrides"},
                f"tasks.{task} ({preset})")
    src_name = task
    if kind == "pretext":
        src_name = (cli_tasks.get(task) or {}).get("source") or own.get("source") or "cifar100"
        if task_kind(src_name, tasks_cfg) != "classification":
            raise ConfigError(f"tasks.{task}.source must be a classification task, got {src_name!r}")

    layers = Layers()

    def apply_task_sections(layer: str, source: dict) -> None:
        for name in dict.fromkeys((src_name, task)):
            section_cfg = source.get(name)
            if not section_cfg:
                continue
            allowed = set(task_sections(name, tasks_cfg)) | {"method_overrides"}
            _check_keys(section_cfg, allowed, f"tasks.{name} ({layer})")
            for sec, val in section_cfg.items():
                if sec == "method_overrides":
                    for n in names:
                        layers.apply((val or {}).get(n), layer if layer == "command line" else "task",
                                     "method.")
                elif isinstance(val, dict):
                    layers.apply(val, layer, f"{sec}.")
                else:
                    layers.set(sec, val, layer)

    names = [base] if base == method else [base, method]
    # ---- method: constructor defaults < variant < preset < task < row < command line
    cls = entry.cls
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "encoder")]
    for p, param in inspect.signature(cls.__init__).parameters.items():
        if p in accepted and param.default is not inspect.Parameter.empty:
            layers.set(f"method.{p}", param.default, "default")
    layers.apply(entry.config, "registry", "method.")
    for k, v in entry.finetune.items():
        layers.set(f"finetune.{k}", v, "registry")
    for n in names:
        layers.apply(cfg.get("methods", {}).get(n), "preset", "method.")
    # preset task sections; their method_overrides form the "task" layer above the methods'
    apply_task_sections("preset", tasks_cfg)
    row_sections = ROW_SECTIONS + tuple(n for n in task_sections(src_name, tasks_cfg)
                                        if n not in COMMON_SECTIONS)
    for key, v in row.items():
        if key.split(".")[0] not in row_sections:
            raise ConfigError(f"table row override {key!r}: expected a key under "
                              f"{', '.join(row_sections)}")
        layers.set(key, v, "row")
    apply_task_sections("command line", cli_tasks)
    for n in names:
        layers.apply(cli_methods.get(n), "command line", "method.")

    method_cfg, _ = layers.section("method")
    for k in method_cfg:
        if k not in accepted:
            where = {s for kk, s in layers.sources.items() if kk == f"method.{k}"}
            raise ConfigError(f"unknown key {k!r} for method {method!r} (set at "
                              f"{', '.join(sorted(where))}); {cls.__name__} accepts: "
                              f"{', '.join(sorted(accepted))}")
    method_plan = MethodPlan(name=method, base=base, cls=cls.__name__, config=method_cfg,
                             pretrains=cls.pretrains, version=int(cls.version))

    # ---- finetuning recipe: a layer just above the defaults
    sections = dict(task_sections(src_name, tasks_cfg))
    if kind == "pretext":
        sections.update(task_sections(task, tasks_cfg))
        sections.pop("finetune", None)
    ft_cls = sections.get("finetune")
    if kind != "pretext" and ft_cls is FinetunePlan:
        recipe = layers.values.get("finetune.recipe", FinetunePlan.recipe)
        if recipe not in FINETUNE_RECIPES:
            raise ConfigError(f"unknown finetuning recipe {recipe!r}; expected one of: "
                              f"{', '.join(FINETUNE_RECIPES)}")
        for k, v in FINETUNE_RECIPES[recipe].items():
            if f"finetune.{k}" not in layers.values:
                layers.set(f"finetune.{k}", v, f"recipe {recipe}")

    def section(name, cls_):
        values, _ = layers.section(name)
        return build_section(cls_, values, f"{name} section of {method}/{task} ({preset})",
                             name, layers.sources)

    encoder = section("encoder", EncoderPlan)
    pretrain = section("pretrain", PretrainPlan) if cls.pretrains else None
    loader = section("loader", LoaderPlan)
    finetune = section("finetune", ft_cls) if ft_cls else None
    detector = section("detector", sections["detector"]) if "detector" in sections else None
    evaluation = (section("evaluation", sections["evaluation"]) if "evaluation" in sections
                  else None)
    options = {name: section(name, cls_) for name, cls_ in sections.items()
               if name not in COMMON_SECTIONS}

    data = section("data", DataPlan)
    data = replace(data, root=str(Path(data_root).expanduser().resolve()) if data_root else None,
                   embedded=None if data_root else data.embedded)
    if "pretrain_data" in sections:  # pretraining reads another data set (COCO: ImageNet)
        pre = section("pretrain_data", sections["pretrain_data"])
        pretrain_data = _pretrain_source(pre, data, preset)
    else:
        pretrain_data = data

    _check_values(dict(pretrain=pretrain, finetune=finetune, encoder=encoder, loader=loader), layers.sources,
                  f"{method}/{task} ({preset})")
    if cls.pretrains:
        _check_method(cls, method, task, preset, encoder, method_cfg, layers.sources)
    if pretrain is not None:
        pretrain.batch_per_process(world_size)
    if finetune is not None:
        finetune.batch_per_process(world_size)

    # a data root replaces the embedded data, so their options do not name the record
    variant = _variant(layers, row_sections, skip=("data.embedded.",) if data_root else ())
    sources = {k: s for k, s in layers.sources.items()}
    return RunPlan(preset=preset, task=task, kind=kind, seed=int(seed), world_size=world_size,
                   method=method_plan, encoder=encoder, pretrain=pretrain, finetune=finetune,
                   detector=detector, evaluation=evaluation, loader=loader, data=data,
                   pretrain_data=pretrain_data, variant=variant, sources=sources, options=options)


def _pretrain_source(pre: DataPlan, data: DataPlan, preset: str) -> DataPlan:
    """A detection task pretrains on ImageNet-format images: ``pretrain_data.root``,
    else (when the preset embeds data) the embedded scenes, saying so when the task
    itself reads a real root."""
    if pre.root:
        return replace(pre, root=str(Path(pre.root).expanduser().resolve()), embedded=None)
    if pre.embedded:
        note = ""
        if data.root:
            note = (f"pretraining on the embedded {pre.dataset} scenes of preset {preset} "
                    f"(no pretrain_data.root given)")
        return replace(pre, note=note)
    return pre


def _variant(layers: Layers, row_sections=ROW_SECTIONS, skip: tuple = ()) -> str:
    """What a row or the command line changed in the method, schedule, encoder and data
    sections: the record's name, so variants never overwrite the default cell. Keys
    starting with a prefix in ``skip`` do not count."""
    parts = []
    for key in sorted(layers.sources):
        if layers.sources[key] not in ("row", "command line") or key.startswith(skip):
            continue
        sec = key.split(".")[0]
        if sec not in row_sections:
            continue
        if _same(layers.before.get(key, _UNSET), layers.values[key]):
            continue  # set to what the layers below already gave: not a variant
        label = key[len("method."):] if sec == "method" else key
        parts.append(f"{label}={layers.values[key]}")
    return ",".join(parts)


def _same(a, b) -> bool:
    if a is _UNSET:
        return False
    norm = (lambda v: tuple(v) if isinstance(v, list) else v)
    return norm(a) == norm(b)


# ------------------------------------------------------------------------ keys
def stable_hash(obj, n: int = 10) -> str:
    blob = json.dumps(obj, sort_keys=True, default=_jsonable)
    return hashlib.sha1(blob.encode()).hexdigest()[:n]


def _jsonable(o):
    if is_dataclass(o):
        return dataclasses.asdict(o)
    if isinstance(o, Path):
        return str(o)
    return str(o)


def iters_per_epoch(num_images: int, batch_per_process: int, world_size: int,
                    drop_last: bool = True, repeated_aug: int = 1) -> int:
    """Iterations of one epoch as the Runner's sampler + DataLoader give them: with
    mmengine's DefaultSampler every rank sees ceil(N / world) samples; with timm's
    repeated-augmentation sampler, floor(N / 256) * 256 / world (ceil(N / world) below
    256 images). A partial last batch is dropped when a rank has a full batch."""
    if repeated_aug > 1 and num_images >= 256:
        per_rank = num_images // 256 * 256 // world_size
    else:
        per_rank = math.ceil(num_images / world_size)
    if drop_last and per_rank >= batch_per_process:
        return max(1, per_rank // batch_per_process)
    return max(1, math.ceil(per_rank / batch_per_process))


# ------------------------------------------------------------------------ output
def plan_to_dict(plan: RunPlan) -> dict:
    def sec(obj):
        return None if obj is None else dataclasses.asdict(obj)

    out = dict(preset=plan.preset, task=plan.task, kind=plan.kind, seed=plan.seed,
               world_size=plan.world_size, variant=plan.variant,
               method=dict(name=plan.method.name, base=plan.method.base, cls=plan.method.cls,
                           pretrains=plan.method.pretrains, version=plan.method.version,
                           **plan.method.config),
               encoder=sec(plan.encoder), loader=sec(plan.loader), data=sec(plan.data),
               pretrain_data=sec(plan.pretrain_data), detector=sec(plan.detector),
               evaluation=sec(plan.evaluation))
    out.update({name: sec(s) for name, s in plan.options.items()})
    out["options"] = list(plan.options)
    for name in ("pretrain", "finetune"):
        s = getattr(plan, name)
        if s is None:
            out[name] = None
            continue
        d = sec(s)
        d.update(lr=s.lr, lr_rule=s.lr_rule, batch_size_per_process=s.batch_per_process(plan.world_size))
        out[name] = d
    return out


def format_plan(info: dict) -> str:
    """Human-readable plan: ``info`` is what ``benchmarks.run.describe_plan`` returns."""
    sources = info["sources"]
    lines = [f"plan: {info['method']['name']} / {info['task']} / preset {info['preset']} / "
             f"seed {info['seed']} / world size {info['world_size']}"]

    def show(section: str, d: dict | None, skip=()):
        if d is None:
            lines.append(f"  {section}: none")
            return
        lines.append(f"  {section}:")
        for k, v in flatten(d).items():
            if k in skip:
                continue
            src = sources.get(f"{section}.{k}", "derived" if k in DERIVED else "default")
            lines.append(f"    {k:28s} {v!s:40s} [{src}]")

    own = [k for k in info.get("options", ())]
    for section in ("method", "encoder", "pretrain", "finetune", "detector", "evaluation",
                    *own, "loader"):
        show(section, info.get(section), skip=("name",) if section == "method" else ())
    for section in ("data", "pretrain_data"):
        d = info[section]
        if section == "pretrain_data" and d == info["data"]:
            lines.append("  pretrain_data: the task's data")
            continue
        where = d["root"] or (f"embedded {d['dataset']} ({d['embedded']})" if d["embedded"]
                              else "MISSING: pass --data-root" if section == "data"
                              else "MISSING: set pretrain_data.root")
        lines.append(f"  {section}: {d['dataset']} at {where}"
                     + (f"  ({d['note']})" if d.get("note") else ""))
    for phase in ("pretrain", "finetune"):
        it = info.get("iterations", {}).get(phase)
        if it:
            lines.append(f"  {phase} iterations: {it['per_epoch']} per epoch x {it['epochs']} "
                         f"epochs = {it['total']} ({it['num_images']} samples, {it['count']})")
    rt = info.get("runtime")
    if rt:
        lines.append(f"  on this machine ({rt['device']}): precision {rt['precision']} -> "
                     f"{rt['precision_here']}; pinned memory {'on' if rt['pin_memory'] else 'off'}; "
                     f"torch.compile {'on' if rt['compile'] else 'off'}")
        if rt["precision"] == "auto":
            lines.append("    (auto: bf16 autocast on a GPU with native bfloat16, fp16 with loss "
                         "scaling on an older GPU, fp32 on a CPU)")
    ck = info["checkpoint"]
    if ck["key"]:
        lines.append(f"  checkpoint: {ck['key']}  cached: {'yes' if ck['cached'] else 'no'}  "
                     f"({ck['path']})")
    elif info["method"]["pretrains"]:
        lines.append("  checkpoint: named once the pretraining data is given (its identity is "
                     "part of the key)")
    else:
        lines.append("  checkpoint: none (this method does not pretrain)")
    lines.append(f"  work dir: {info['work_dir']}")
    lines.append(f"  record: {info['record']['path']}"
                 + ("  (exists)" if info["record"]["exists"] else ""))
    for m in info.get("missing_data", []):
        lines.append(f"  missing data: {m}")
    return "\n".join(lines)


DERIVED = ("lr", "lr_rule", "batch_size_per_process", "base", "cls", "pretrains", "version",
           "note", "root")
