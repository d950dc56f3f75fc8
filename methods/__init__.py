"""The method registry: a name -> (class, config defaults that make the variant).

A variant of a method is a config value, not a class: ``part-grid`` is PART with
``sampling='grid'``. ``build_method(name, **cfg)`` merges the variant's defaults
with the caller's config (the caller wins).
"""
from __future__ import annotations

from engine.errors import ConfigError

from .base import PretrainMethod
from .part import PART

METHODS: dict[str, tuple[type[PretrainMethod], dict]] = {
    "part": (PART, {}),
    "part-grid": (PART, {"sampling": "grid"}),
    "part-aspect-scale": (PART, {"sampling": "scale_aspect"}),
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
