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

__all__ = ["PretextTask"]


class PretextTask(Task):
    name = "pretext"
    # metrics are the method's own: PART err_x/err_y/err_euclid/const_err_euclid,
    # MAE recon_mse/zero_mse, MP3 and DropPos pos_acc/chance_acc

    def __init__(self, cfg, data_root, cache_root, source):
        super().__init__(cfg, data_root, cache_root)
        self.source = source  # the task whose data and encoder are evaluated

    @property
    def encoder_cfg(self):
        return self.source.encoder_cfg

    @property
    def pretrain_cfg(self):
        return self.source.pretrain_cfg

    def check_data(self):
        self.source.check_data()

    def pretrain_dataset(self):
        return self.source.pretrain_dataset()

    def heldout_images(self):
        size = self.source.img_size
        tf = T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(),
                        T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])
        base = self.source._split(False, tf)
        n = min(len(base), int(self.cfg.get("max_images", 1000)))
        return Subset(base, range(n))

    def run(self, *, pretrained, work_dir, seed, method_name, log=print, **_):
        if pretrained is None:
            raise ConfigError(f"method {method_name!r} has no pretraining: nothing to evaluate "
                              f"with --task pretext")
        method = load_method(Path(pretrained) / "method.pth")
        if not hasattr(method, "pretext_outputs"):
            raise ConfigError(f"method {method_name!r} defines no pretext evaluation")
        loader = DataLoader(self.heldout_images(), batch_size=int(self.cfg.get("batch_size", 64)),
                            shuffle=False, num_workers=0)
        collected: dict[str, list] = {}
        with torch.random.fork_rng():
            torch.manual_seed(int(self.cfg.get("eval_seed", 1234)))
            for images, _ in loader:
                for k, v in method.pretext_outputs(images).items():
                    collected.setdefault(k, []).append(v)
        merged = {k: torch.cat(v) for k, v in collected.items()}
        return method.summarize_pretext(merged)
