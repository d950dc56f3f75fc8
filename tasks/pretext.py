"""Pretext evaluation: a pretrained method's own errors on held-out images.

For PART these are Table 5's errors (x, y, Euclidean, in units of the reference box)
with the best constant predictor's Euclidean error beside them. The images are the
held-out split of the source task's data set (``source``, e.g. cifar100), without
augmentation; patch positions and pairs are drawn from a fixed seed so that two
checkpoints are scored on the same boxes.
"""
from __future__ import annotations

from pathlib import Path

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import DataLoader, Subset
from torchvision import transforms as T

from engine.errors import ConfigError
from engine.pretrain import load_method

from .base import Task
from .classification import ClassificationTask

__all__ = ["PretextTask"]


class PretextTask(Task):
    name = "pretext"
    kind = "pretext"
    # metrics are the method's own: PART err_x/err_y/err_euclid/const_err_euclid,
    # MAE recon_mse/zero_mse, MP3 and DropPos pos_acc/chance_acc

    def __init__(self, plan, cache_root):
        super().__init__(plan, cache_root)
        # the source task's data, encoder and pretraining are the plan's (resolve_plan)
        self.source = ClassificationTask(plan, cache_root)

    def check_data(self):
        self.source.check_data()

    def train_sizes(self):
        return {"pretrain": self.source.train_sizes()["pretrain"], "finetune": None}

    def pretrain_dataset(self):
        return self.source.pretrain_dataset()

    def heldout_images(self):
        size = self.source.img_size
        tf = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(),
                        T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])
        base = self.source._split(False, tf)
        n = min(len(base), int(self.plan.evaluation.max_images))
        return Subset(base, range(n))

    def run(self, *, pretrained, work_dir, log=print):
        method_name = self.plan.method.name
        if pretrained is None:
            raise ConfigError(f"method {method_name!r} has no pretraining: nothing to evaluate "
                              f"with --task pretext")
        method = load_method(Path(pretrained) / "method.pth")
        if not hasattr(method, "pretext_outputs"):
            raise ConfigError(f"method {method_name!r} defines no pretext evaluation")
        ev = self.plan.evaluation
        loader = DataLoader(self.heldout_images(), batch_size=int(ev.batch_size),
                            shuffle=False, num_workers=0)
        collected: dict[str, list] = {}
        with torch.random.fork_rng():
            torch.manual_seed(int(ev.eval_seed))
            for images, _ in loader:
                for k, v in method.pretext_outputs(images).items():
                    collected.setdefault(k, []).append(v)
        merged = {k: torch.cat(v) for k, v in collected.items()}
        return method.summarize_pretext(merged)
