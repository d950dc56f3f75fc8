"""The run plan's vocabulary: one typed, frozen description of everything a run does.

The sections every task shares (encoder, schedules, loader, data, evaluation), the
schedule maths (global and per-process batch, the lr after its scaling rule, a step
floor, iterations per epoch), :class:`RunPlan` itself, its dict form
(:func:`plan_to_dict`, whose :func:`stable_hash` names records) and its text form
(:func:`format_plan`, what ``--dry-run`` prints). A task's own sections live with the
task (detection's in :mod:`tasks.detection_config`, the frozen protocols' in
:mod:`tasks.frozen`); resolving a plan from a preset's layers is
:mod:`pipeline.resolve`, the one module that knows both registries. Batch sizes are
global, as papers state them. See docs/plan-and-presets.md for the layers.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = [
    "EncoderPlan", "AugmentPlan", "PretrainPlan", "FinetunePlan", "LoaderPlan", "DataPlan",
    "EvaluationPlan", "MethodPlan", "RunPlan", "FINETUNE_RECIPES", "PUBLISHED_TRAIN_SIZES",
    "COMMON_SECTIONS", "ROW_SECTIONS", "plan_to_dict", "with_step_floor", "format_plan",
    "stable_hash", "iters_per_epoch", "flatten", "unflatten",
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


@dataclass(frozen=True)
class MethodPlan:
    name: str
    base: str
    cls: str
    config: dict            # the method class's constructor arguments (no encoder)
    pretrains: bool
    version: int = 1        # the method class's code version: a record of another version
                            # is not today's result (tables render it as stale)
    # the registry entry (class, variant values), resolved once with the plan; not part of
    # the plan's dict or hash
    entry: Any = field(default=None, compare=False, repr=False)


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
    finetune: Any           # the task's finetuning section (FinetunePlan, detection's, EEG's)
    detector: Any           # detection's DetectorPlan (tasks.detection_config), else None
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
    """Human-readable plan: ``info`` is what ``pipeline.describe.describe_plan`` returns."""
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
