"""Collapse monitoring: how spread out an encoder's embeddings are, during pretraining.

Self-supervised pretraining can collapse representations (every image mapped to
nearly the same point, or onto a few directions) while its loss still falls. Two
statistics of an encoder's embeddings of a fixed held-out batch watch for it:

- :func:`normalized_std`: the standard deviation of the l2-normalised embeddings per
  dimension, averaged over dimensions; ``ratio`` is it times ``sqrt(d)``: 1 for
  isotropic embeddings (each coordinate of a random unit vector has variance 1/d), 0
  when every embedding is the same;
- :func:`effective_rank`: RankMe's ``exp(entropy)`` of the normalised singular values
  of the ``(n, d)`` embedding matrix: ``d`` when every direction is used equally, 1
  for a matrix of rank one.

:class:`PretrainHealthHook` measures both on the [CLS] token and on the mean patch
token at the start (the randomly initialised encoder of the run), every log interval
and at the end, logs a line each time and writes the history to ``health.json`` in the
work folder. :func:`health_warnings` compares the end with the start: the rule is in
:data:`COLLAPSE_FRACTION` (mean patch token only). Measuring changes no weight and no random stream.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from .atomic import atomic_write_json

__all__ = ["normalized_std", "effective_rank", "embedding_health", "encoder_health",
           "PretrainHealthHook", "health_warnings", "health_report", "COLLAPSE_FRACTION"]

#: a pretrained encoder is flagged when a statistic of its mean patch token ends below
#: this fraction of the randomly initialised encoder's value on the same images. The
#: [CLS] token is measured and logged but not judged: PART's and MP3's losses never read
#: it, and its spread falls below half in ordinary runs that transfer well (the
#: measurements behind both choices: docs/notes/2026-12-05-collapse-monitoring.md)
COLLAPSE_FRACTION = 0.2
JUDGED_TOKENS = (("avg", "mean token"),)


def normalized_std(features: torch.Tensor) -> float:
    """Mean over dimensions of the std (over samples, ddof 0) of the l2-normalised rows."""
    z = torch.nn.functional.normalize(features.double(), dim=1)
    return float(z.std(dim=0, unbiased=False).mean())


def effective_rank(features: torch.Tensor, eps: float = 1e-12) -> float:
    """RankMe: ``exp(-sum p_k log p_k)`` with ``p = s / sum(s)`` over the singular values
    ``s`` of the ``(n, d)`` matrix (not centred)."""
    s = torch.linalg.svdvals(features.double())
    p = s / s.sum().clamp_min(eps)
    p = p[p > eps]
    return float(torch.exp(-(p * p.log()).sum()))


def embedding_health(features: torch.Tensor) -> dict:
    d = features.shape[1]
    std = normalized_std(features)
    return {"std": std, "std_ratio": std * math.sqrt(d), "effective_rank": effective_rank(features),
            "dim": d}


@torch.no_grad()
def encoder_health(encoder, batch: torch.Tensor) -> dict:
    """Both statistics of ``encoder``'s [CLS] and mean patch tokens of ``batch``."""
    was_training = encoder.training
    encoder.eval()
    try:
        device = next(encoder.parameters()).device
        tokens = encoder.forward_features(batch.to(device)).float()
    finally:
        encoder.train(was_training)
    prefix = getattr(encoder, "num_prefix_tokens", 1)
    return {"cls": embedding_health(tokens[:, 0].cpu()),
            "avg": embedding_health(tokens[:, prefix:].mean(dim=1).cpu())}


def health_warnings(initial: dict, final: dict, fraction: float = COLLAPSE_FRACTION) -> list[str]:
    """``"pretraining: ..."`` lines for each statistic of each judged token
    (:data:`JUDGED_TOKENS`) that ended below ``fraction`` of its value for the randomly
    initialised encoder."""
    out = []
    for token, name in JUDGED_TOKENS:
        for stat, what in (("std_ratio", "std of normalised embeddings x sqrt(d)"),
                           ("effective_rank", "effective rank")):
            start, end = initial[token][stat], final[token][stat]
            if end < fraction * start:
                out.append(f"pretraining: the {name} {what} fell from {start:.3g} (random "
                           f"encoder) to {end:.3g}, below {fraction:g} of it: the features may "
                           f"have collapsed")
    return out


@HOOKS.register_module()
class PretrainHealthHook(Hook):
    """Measures :func:`encoder_health` of the model's ``encoder`` on ``batch`` before
    training, every ``interval`` iterations and after training (main process; the
    measurement runs under a forked random state). Writes ``health.json`` to the work
    folder: ``{"initial", "final", "history": [{"iter", "cls", "avg"}], "warnings"}``."""

    priority = "LOW"

    def __init__(self, batch: torch.Tensor, interval: int, log=None):
        self.batch, self.interval, self.log = batch, max(1, int(interval)), log
        self.history: list[dict] = []

    def _measure(self, runner, it: int) -> dict:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            stats = encoder_health(model.encoder, self.batch)
        entry = {"iter": it, **stats}
        self.history = [h for h in self.history if h["iter"] != it] + [entry]
        line = (f"[health] iter {it}: [CLS] std x sqrt(d) {stats['cls']['std_ratio']:.3f}, "
                f"effective rank {stats['cls']['effective_rank']:.1f}; mean token "
                f"{stats['avg']['std_ratio']:.3f}, {stats['avg']['effective_rank']:.1f} "
                f"(of {stats['avg']['dim']})")
        (self.log or runner.logger.info)(line)
        return entry

    def before_train(self, runner) -> None:
        if runner.iter == 0:
            self._measure(runner, 0)
        else:  # a resumed run keeps what was measured before the interruption
            try:
                self.history = json.loads((Path(runner.work_dir) / "health.json").read_text())["history"]
            except (OSError, ValueError, KeyError):
                self.history = []
        self._write(runner)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if (runner.iter + 1) % self.interval == 0:
            self._measure(runner, runner.iter + 1)
            self._write(runner)

    def after_train(self, runner) -> None:
        self._measure(runner, runner.iter)
        self._write(runner, final=True)

    def _write(self, runner, final: bool = False) -> None:
        from mmengine.dist import is_main_process

        if is_main_process():
            atomic_write_json(Path(runner.work_dir) / "health.json",
                              health_report(self.history, final), indent=1)


def health_report(history: list[dict], final: bool = True, note: str = "") -> dict:
    """``{"initial", "final", "history", "warnings", "note"}`` of a measurement history
    (``final`` None until training has ended)."""
    initial = next((h for h in history if h["iter"] == 0), None)
    last = history[-1] if final and history else None
    return {"initial": initial, "final": last, "history": history, "note": note,
            "warnings": health_warnings(initial, last) if initial and last else []}
