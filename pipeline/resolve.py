"""Resolving a run plan: the layers of a preset, a table row and the command line.

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
import inspect
import os
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from engine.plan import (COMMON_SECTIONS, FINETUNE_RECIPES, ROW_SECTIONS, DataPlan, EncoderPlan,
                         FinetunePlan, LoaderPlan, MethodPlan, PretrainPlan, RunPlan, flatten,
                         unflatten)
from methods import METHODS, method_entry
from tasks import TASKS

__all__ = ["resolve_plan", "build_section", "Layers"]


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
        from engine.precision import PRECISIONS

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

    ``cfg`` is the preset as loaded by :func:`pipeline.presets.load_preset` (without the
    command line); ``cli_methods``/``cli_tasks`` are the command line's
    ``methods.*``/``tasks.*`` options; ``row`` a table row's dotted overrides.
    """
    r = _Resolution(cfg, method, task, row or {}, cli_methods or {}, cli_tasks or {})
    r.method_layers()
    r.task_layers("preset", r.tasks_cfg)   # their method_overrides: the "task" layer
    r.row_layer()
    r.task_layers("command line", r.cli_tasks)
    for n in r.names:
        r.layers.apply(r.cli_methods.get(n), "command line", "method.")
    method_plan = r.method_plan()
    r.recipe_layer()
    return r.plan(method_plan, int(seed), int(world_size or os.environ.get("WORLD_SIZE", "1")),
                  data_root)


class _Resolution:
    """The steps of :func:`resolve_plan`, one layer or one section kind each."""

    def __init__(self, cfg: dict, method: str, task: str, row: dict, cli_methods: dict,
                 cli_tasks: dict):
        try:
            self.entry = method_entry(method)
        except KeyError as exc:
            raise ConfigError(exc.args[0]) from None
        self.method, self.task, self.row = method, task, row
        self.cfg, self.cli_methods, self.cli_tasks = cfg, cli_methods, cli_tasks
        self.base = self.entry.base or method
        self.names = [self.base] if self.base == method else [self.base, method]
        self.tasks_cfg = cfg.get("tasks", {})
        self.kind = task_kind(task, self.tasks_cfg)
        self.preset = cfg.get("preset", "?")
        for name in cli_methods:
            if name not in METHODS:
                raise ConfigError(f"unknown method {name!r} in --cfg-options methods.{name}; "
                                  f"expected one of: {', '.join(sorted(METHODS))}")
        for name in cli_tasks:
            task_kind(name, self.tasks_cfg)
        # the task whose sections hold encoder/pretraining/data (pretext: its source)
        own = dict(self.tasks_cfg[task])
        _check_keys(own, set(task_sections(task, self.tasks_cfg)) | {"method_overrides"},
                    f"tasks.{task} ({self.preset})")
        self.src_name = task
        if self.kind == "pretext":
            self.src_name = ((cli_tasks.get(task) or {}).get("source") or own.get("source")
                             or "cifar100")
            if task_kind(self.src_name, self.tasks_cfg) != "classification":
                raise ConfigError(f"tasks.{task}.source must be a classification task, got "
                                  f"{self.src_name!r}")
        self.row_sections = ROW_SECTIONS + tuple(
            n for n in task_sections(self.src_name, self.tasks_cfg) if n not in COMMON_SECTIONS)
        cls = self.entry.cls
        self.accepted = [p for p in inspect.signature(cls.__init__).parameters
                         if p not in ("self", "encoder")]
        self.layers = Layers()

    # ---- layers, lowest first
    def method_layers(self) -> None:
        """Constructor defaults < the variant's registry values < the preset's methods."""
        for p, param in inspect.signature(self.entry.cls.__init__).parameters.items():
            if p in self.accepted and param.default is not inspect.Parameter.empty:
                self.layers.set(f"method.{p}", param.default, "default")
        self.layers.apply(self.entry.config, "registry", "method.")
        for k, v in self.entry.finetune.items():
            self.layers.set(f"finetune.{k}", v, "registry")
        for n in self.names:
            self.layers.apply(self.cfg.get("methods", {}).get(n), "preset", "method.")

    def task_layers(self, layer: str, source: dict) -> None:
        """The sections of the task (and of a pretext task's source) in ``source``."""
        for name in dict.fromkeys((self.src_name, self.task)):
            section_cfg = source.get(name)
            if not section_cfg:
                continue
            allowed = set(task_sections(name, self.tasks_cfg)) | {"method_overrides"}
            _check_keys(section_cfg, allowed, f"tasks.{name} ({layer})")
            for sec, val in section_cfg.items():
                if sec == "method_overrides":
                    for n in self.names:
                        self.layers.apply((val or {}).get(n),
                                          layer if layer == "command line" else "task", "method.")
                elif isinstance(val, dict):
                    self.layers.apply(val, layer, f"{sec}.")
                else:
                    self.layers.set(sec, val, layer)

    def row_layer(self) -> None:
        for key, v in self.row.items():
            if key.split(".")[0] not in self.row_sections:
                raise ConfigError(f"table row override {key!r}: expected a key under "
                                  f"{', '.join(self.row_sections)}")
            self.layers.set(key, v, "row")

    def method_plan(self) -> MethodPlan:
        cls = self.entry.cls
        method_cfg, _ = self.layers.section("method")
        for k in method_cfg:
            if k not in self.accepted:
                where = {s for kk, s in self.layers.sources.items() if kk == f"method.{k}"}
                raise ConfigError(f"unknown key {k!r} for method {self.method!r} (set at "
                                  f"{', '.join(sorted(where))}); {cls.__name__} accepts: "
                                  f"{', '.join(sorted(self.accepted))}")
        return MethodPlan(name=self.method, base=self.base, cls=cls.__name__, config=method_cfg,
                          pretrains=cls.pretrains, version=int(cls.version), entry=self.entry)

    def sections(self) -> dict:
        """The plan sections of this run: the source task's (a pretext task adds its own
        and has no finetuning)."""
        sections = dict(task_sections(self.src_name, self.tasks_cfg))
        if self.kind == "pretext":
            sections.update(task_sections(self.task, self.tasks_cfg))
            sections.pop("finetune", None)
        return sections

    def recipe_layer(self) -> None:
        """A named finetuning recipe: a layer just above the defaults."""
        if self.kind == "pretext" or self.sections().get("finetune") is not FinetunePlan:
            return
        recipe = self.layers.values.get("finetune.recipe", FinetunePlan.recipe)
        if recipe not in FINETUNE_RECIPES:
            raise ConfigError(f"unknown finetuning recipe {recipe!r}; expected one of: "
                              f"{', '.join(FINETUNE_RECIPES)}")
        for k, v in FINETUNE_RECIPES[recipe].items():
            if f"finetune.{k}" not in self.layers.values:
                self.layers.set(f"finetune.{k}", v, f"recipe {recipe}")

    # ---- sections, then checks
    def section(self, name: str, cls_):
        values, _ = self.layers.section(name)
        return build_section(cls_, values,
                             f"{name} section of {self.method}/{self.task} ({self.preset})",
                             name, self.layers.sources)

    def data_sections(self, sections: dict, data_root) -> tuple[DataPlan, DataPlan]:
        """The task's data (a root replaces the embedded data) and the pretraining data."""
        data = self.section("data", DataPlan)
        data = replace(data, root=str(Path(data_root).expanduser().resolve()) if data_root else None,
                       embedded=None if data_root else data.embedded)
        if "pretrain_data" not in sections:
            return data, data
        # pretraining reads another data set (COCO: ImageNet)
        pre = self.section("pretrain_data", sections["pretrain_data"])
        return data, _pretrain_source(pre, data, self.preset)

    def plan(self, method_plan: MethodPlan, seed: int, world_size: int, data_root) -> RunPlan:
        cls, sections = self.entry.cls, self.sections()
        encoder = self.section("encoder", EncoderPlan)
        pretrain = self.section("pretrain", PretrainPlan) if cls.pretrains else None
        loader = self.section("loader", LoaderPlan)
        optional = {name: self.section(name, sections[name]) if name in sections else None
                    for name in ("finetune", "detector", "evaluation")}
        options = {name: self.section(name, cls_) for name, cls_ in sections.items()
                   if name not in COMMON_SECTIONS}
        data, pretrain_data = self.data_sections(sections, data_root)

        where = f"{self.method}/{self.task} ({self.preset})"
        _check_values(dict(pretrain=pretrain, finetune=optional["finetune"], encoder=encoder,
                           loader=loader), self.layers.sources, where)
        if cls.pretrains:
            _check_method(cls, self.method, self.task, self.preset, encoder, method_plan.config,
                          self.layers.sources)
        for schedule in (pretrain, optional["finetune"]):
            if schedule is not None:
                schedule.batch_per_process(world_size)

        # a data root replaces the embedded data, so their options do not name the record
        variant = _variant(self.layers, self.row_sections,
                           skip=("data.embedded.",) if data_root else ())
        return RunPlan(preset=self.preset, task=self.task, kind=self.kind, seed=seed,
                       world_size=world_size, method=method_plan, encoder=encoder,
                       pretrain=pretrain, loader=loader, data=data, pretrain_data=pretrain_data,
                       variant=variant, sources=dict(self.layers.sources), options=options,
                       **optional)


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
