"""The method registry: a name -> (class, config defaults that make the variant).

A variant of a method is a config value, not a class: ``part-grid`` is PART with
``sampling='grid'``. ``build_method(name, **cfg)`` merges the variant's defaults
with the caller's config (the caller wins).
"""
from __future__ import annotations

from engine.errors import ConfigError

from .base import PretrainMethod
from .part import PART
from .mae import MAE
from .droppos import DropPos
from .mp3 import MP3
from .scratch import Scratch

METHODS: dict[str, tuple[type[PretrainMethod], dict]] = {
    "part": (PART, {}),
    "part-grid": (PART, {"sampling": "grid"}),
    "part-aspect-scale": (PART, {"sampling": "scale_aspect"}),
    "mae": (MAE, {}),
    "droppos": (DropPos, {}),
    "mp3": (MP3, {}),
    "mp3-nope": (MP3, {"finetune_pos_embed": False}),
    "scratch": (Scratch, {}),
    "scratch-nope": (Scratch, {"finetune_pos_embed": False}),
}


def method_defaults(name: str) -> dict:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; expected one of: {', '.join(sorted(METHODS))}")
    return dict(METHODS[name][1])


def build_method(name: str, **cfg) -> PretrainMethod:
    merged = method_defaults(name)
    merged.update(cfg)
    cls = METHODS[name][0]
    return cls(**merged)


__all__ = ["METHODS", "build_method", "method_defaults", "PretrainMethod"]
