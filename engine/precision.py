"""Numeric precision of a training step, resolved where the device is known.

The plan holds what the user asked for (``loader.precision``, one of
:data:`PRECISIONS`: ``auto``, ``bf16``, ``fp16`` or ``fp32``);
:func:`engine.runner.build_runner` resolves it against the device the process trains on
(:class:`DeviceCaps`, :func:`resolve_precision`) and picks the optimizer wrapper
(:func:`optim_wrapper_type`):

- ``bf16``: :class:`BF16OptimWrapper` (ours): forward under ``torch.autocast`` in
  bfloat16; fp32 weights, gradients, optimizer; no loss scaling;
- ``fp16``: mmengine's ``AmpOptimWrapper``, ``dtype="float16"``, dynamic loss scale;
- ``fp32``: mmengine's ``OptimWrapper``, plain fp32.

``auto`` is ``bf16`` on a GPU whose compute capability is 8.0 or above, ``fp16`` on an
older GPU and ``fp32`` on a CPU. An explicit ``bf16`` on a GPU without native bfloat16,
or ``fp16`` without a GPU, stops the run with one line
(:class:`engine.errors.ConfigError`). ``bf16`` on a CPU is allowed. Evaluation (the
Runner's test loop) stays in fp32.

Details: docs/reference/precision.md.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS

from .errors import ConfigError

__all__ = ["PRECISIONS", "DeviceCaps", "resolve_precision", "optim_wrapper_type",
           "BF16OptimWrapper"]

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@dataclass(frozen=True)
class DeviceCaps:
    """What the training device can do: ``cuda`` (a GPU is used), ``bf16`` (the GPU
    computes bfloat16 natively), ``name`` (for messages and records)."""
    cuda: bool
    bf16: bool = False
    name: str = "cpu"

    @classmethod
    def probe(cls) -> "DeviceCaps":
        """This process's device (the current CUDA device, else the CPU)."""
        if not torch.cuda.is_available():
            return cls(cuda=False)
        return cls(cuda=True, bf16=torch.cuda.is_bf16_supported(including_emulation=False),
                   name=torch.cuda.get_device_name())


def resolve_precision(requested: str, caps: DeviceCaps) -> str:
    """``bf16``, ``fp16`` or ``fp32`` for ``requested`` on ``caps`` (module docstring)."""
    if requested not in PRECISIONS:
        raise ConfigError(f"loader.precision must be one of {', '.join(PRECISIONS)}, got {requested!r}")
    if requested == "auto":
        return ("bf16" if caps.bf16 else "fp16") if caps.cuda else "fp32"
    if requested == "bf16" and caps.cuda and not caps.bf16:
        raise ConfigError(f"loader.precision bf16: {caps.name} has no native bfloat16 (compute "
                          f"capability below 8.0); use fp16 (with loss scaling) or auto")
    if requested == "fp16" and not caps.cuda:
        raise ConfigError("loader.precision fp16 needs a GPU (its loss scaling is CUDA's); on a "
                          "CPU use fp32, bf16 or auto")
    return requested


def optim_wrapper_type(precision: str) -> dict:
    """The optimizer wrapper's config (without the optimizer) for a resolved precision."""
    return {"bf16": dict(type="BF16OptimWrapper"),
            "fp16": dict(type="AmpOptimWrapper", dtype="float16", loss_scale="dynamic"),
            "fp32": dict(type="OptimWrapper")}[precision]


@OPTIM_WRAPPERS.register_module()
class BF16OptimWrapper(OptimWrapper):
    """mmengine's ``OptimWrapper`` whose ``optim_context`` (where mmengine's
    ``BaseModel.train_step`` runs the data preprocessor and the forward pass) also
    autocasts to bfloat16 on the model's device. The backward pass, the gradients and
    the optimizer step stay fp32, as under any autocast; no loss scaler."""

    @contextmanager
    def optim_context(self, model: torch.nn.Module):
        device = next(model.parameters()).device.type
        with super().optim_context(model), torch.autocast(device_type=device, dtype=torch.bfloat16):
            yield
