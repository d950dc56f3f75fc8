"""Presets (mmengine Python config files) and the command line's ``--cfg-options``.

A preset is read as written, without the command line: the command line is its own
layer of the run plan (:func:`pipeline.resolve.resolve_plan`), above the preset, the task
overrides and a table row, so that ``--cfg-options methods.part.num_pairs=512`` wins
over ImageNet's 4802 and every value can say where it came from.
"""
from __future__ import annotations

from pathlib import Path

from mmengine.config import Config

from engine.errors import ConfigError
from engine.plan import unflatten

#: the preset files: data, at the top of the repository
PRESETS = Path(__file__).resolve().parents[1] / "presets"

__all__ = ["load_preset", "preset_names", "split_cfg_options", "PRESETS"]


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.py") if not p.stem.startswith("_"))


def load_preset(preset: str) -> dict:
    """The preset file's ``methods`` and ``tasks`` sections and its name."""
    path = Path(preset)
    if not path.suffix:
        path = PRESETS / f"{preset}.py"
    if not path.is_file():
        raise ConfigError(f"unknown preset {preset!r}; expected one of: {', '.join(preset_names())} "
                          f"or a path to a preset file")
    # names starting with "_" are the file's own helpers (shared sections)
    out = {k: v for k, v in Config.fromfile(str(path)).to_dict().items() if not k.startswith("_")}
    unknown = set(out) - {"preset", "methods", "tasks"}
    if unknown:
        raise ConfigError(f"preset {path}: unknown top-level key(s) {', '.join(sorted(unknown))}; "
                          f"expected preset, methods, tasks")
    out.setdefault("preset", path.stem)
    out.setdefault("methods", {})
    out.setdefault("tasks", {})
    return out


def split_cfg_options(cfg_options: dict | None) -> tuple[dict, dict]:
    """``{"methods.part.num_pairs": 512, "tasks.cifar100.pretrain.epochs": 1}`` ->
    (``{"part": {"num_pairs": 512}}``, ``{"cifar100": {"pretrain": {"epochs": 1}}}``)."""
    methods, tasks = {}, {}
    for key, value in (cfg_options or {}).items():
        parts = str(key).split(".")
        if parts[0] not in ("methods", "tasks") or len(parts) < 3:
            raise ConfigError(f"--cfg-options {key}={value}: expected methods.<method>.<key>=... "
                              f"or tasks.<task>.<section>.<key>=...")
        target = methods if parts[0] == "methods" else tasks
        target[".".join(parts[1:])] = value
    return unflatten(methods), unflatten(tasks)
