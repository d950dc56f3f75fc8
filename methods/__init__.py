"""The method registry: a name -> :class:`MethodEntry`.

A variant of a method is configuration, not a class, and it is defined here once:
``part-grid`` is PART with ``sampling='grid'``; ``mp3-nope`` is MP3 finetuned without
position embeddings (a finetuning option, so it shares ``mp3``'s pretraining). A
variant inherits every preset and task setting of its ``base`` method
(:func:`engine.plan.resolve_plan`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .base import PretrainMethod
from .part import PART
from .mae import MAE
from .droppos import DropPos
from .mp3 import MP3
from .scratch import Scratch


@dataclass(frozen=True)
class MethodEntry:
    cls: type[PretrainMethod]
    base: str | None = None                       # the method this is a variant of
    config: dict = field(default_factory=dict)    # constructor values of the variant
    finetune: dict = field(default_factory=dict)  # finetuning options of the variant


METHODS: dict[str, MethodEntry] = {
    "part": MethodEntry(PART),
    "part-grid": MethodEntry(PART, "part", {"sampling": "grid"}),
    "part-aspect-scale": MethodEntry(PART, "part", {"sampling": "scale_aspect"}),
    "mae": MethodEntry(MAE),
    "droppos": MethodEntry(DropPos),
    "mp3": MethodEntry(MP3),
    "mp3-nope": MethodEntry(MP3, "mp3", finetune={"pos_embed": False}),
    "scratch": MethodEntry(Scratch),
    "scratch-nope": MethodEntry(Scratch, "scratch", finetune={"pos_embed": False}),
}


def method_entry(name: str) -> MethodEntry:
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; expected one of: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def method_defaults(name: str) -> dict:
    return dict(method_entry(name).config)


def build_method(name: str, **cfg) -> PretrainMethod:
    """The method ``name`` with the variant's values, then ``cfg`` (the caller wins)."""
    entry = method_entry(name)
    return entry.cls(**{**entry.config, **cfg})


__all__ = ["METHODS", "MethodEntry", "method_entry", "build_method", "method_defaults",
           "PretrainMethod"]
