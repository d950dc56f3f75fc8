"""Presets (mmengine Python config files) and the resolution of one table cell.

A cell is (method, task) under a preset: the method's config is the preset's
``methods.<name>`` section, then the task's ``method_overrides.<name>`` (e.g. ImageNet
pretraining uses more pairs), then the caller's overrides, plus the task's encoder.
Whatever differs from the preset's own method config is the cell's *variant* tag
(``head=mlp``, ``num_pairs=512``): it names the record, so variants never overwrite
each other and tables find them.
"""
from __future__ import annotations

import copy
from pathlib import Path

from mmengine.config import Config

from .errors import ConfigError

PRESETS = Path(__file__).resolve().parents[1] / "benchmarks" / "presets"

__all__ = ["load_preset", "resolve_cell", "preset_names"]


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.py") if not p.stem.startswith("_"))


def load_preset(preset: str, cfg_options: dict | None = None) -> dict:
    path = Path(preset)
    if not path.suffix:
        path = PRESETS / f"{preset}.py"
    if not path.is_file():
        raise ConfigError(f"unknown preset {preset!r}; expected one of: {', '.join(preset_names())} "
                          f"or a path to a preset file")
    cfg = Config.fromfile(str(path))
    preset_methods = copy.deepcopy(cfg.to_dict().get("methods", {}))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    out = cfg.to_dict()
    out.setdefault("preset", path.stem)
    out["_preset_methods"] = preset_methods
    return out


def resolve_cell(cfg: dict, method: str, task, method_overrides: dict | None = None) -> dict:
    from methods import METHODS

    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; expected one of: {', '.join(sorted(METHODS))}")
    cls, registry_defaults = METHODS[method]
    base = dict(cfg["_preset_methods"].get(method, {}))
    method_cfg = dict(cfg.get("methods", {}).get(method, {}))
    task_overrides = (task.cfg.get("method_overrides") or {}).get(method, {})
    method_cfg.update(task_overrides)
    base.update(task_overrides)
    method_cfg.update(method_overrides or {})
    variant = ",".join(f"{k}={method_cfg[k]}" for k in sorted(method_cfg)
                       if k not in base or base[k] != method_cfg[k])
    method_cfg["encoder"] = task.encoder_cfg
    merged = {**registry_defaults, **method_cfg}
    return dict(method=method, variant=variant, method_cfg=method_cfg,
                pretrains=cls.pretrains,
                finetune_pos_embed=bool(merged.get("finetune_pos_embed", True)))
