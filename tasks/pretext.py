"""Pretext evaluation: a pretrained method's own errors on held-out samples.

For PART these are Table 5's errors (x, y, Euclidean, in units of the reference box)
with the best constant predictor's Euclidean error beside them. The samples are the
held-out split of the ``source`` task's data set (resolved into the plan's ``data``:
e.g. cifar100), read through the data-set registry without augmentation; patch
positions and pairs are drawn from a fixed seed so that two checkpoints are scored on
the same boxes.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from engine.errors import ConfigError
from engine.plan import EvaluationPlan
from engine.pretrain import load_method

from .base import Task
from .data.sources import data_source

__all__ = ["PretextTask"]


class PretextTask(Task):
    name = "pretext"
    kind = "pretext"
    # the source task's sections (data, encoder, pretraining) come with "source"
    sections = {"source": str, "evaluation": EvaluationPlan}
    # metrics are the method's own: PART err_x/err_y/err_euclid/const_err_euclid,
    # MAE recon_mse/zero_mse, MP3 and DropPos pos_acc/chance_acc

    def check_data(self):
        src = data_source(self.plan.data.dataset)
        src.read(self.root, True, None)
        src.read(self.root, False, None)

    def train_sizes(self):
        n = len(data_source(self.plan.data.dataset).read(self.root, True, None)) \
            if self.plan.data.root else None
        return {"pretrain": n, "finetune": None}

    def heldout_set(self):
        base = super().heldout_set()
        return Subset(base, range(min(len(base), int(self.plan.evaluation.max_images))))

    def run(self, *, pretrained, work_dir, log=print):
        method_name = self.plan.method.name
        if pretrained is None:
            raise ConfigError(f"method {method_name!r} has no pretraining: nothing to evaluate "
                              f"with --task pretext")
        method = load_method(Path(pretrained) / "method.pth")
        ev = self.plan.evaluation
        loader = DataLoader(self.heldout_set(), batch_size=int(ev.batch_size),
                            shuffle=False, num_workers=0)
        collected: dict[str, list] = {}
        with torch.random.fork_rng():
            torch.manual_seed(int(ev.eval_seed))
            for samples, _ in loader:
                for k, v in method.pretext_outputs(samples).items():
                    collected.setdefault(k, []).append(v)
        merged = {k: torch.cat(v) for k, v in collected.items()}
        return method.summarize_pretext(merged)
