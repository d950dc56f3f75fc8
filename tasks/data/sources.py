"""The data-set registry: how each data set is read, generated and augmented for pretraining.

A run plan names data sets (``plan.data`` for the task, ``plan.pretrain_data`` for the
images a method pretrains on: a classification task's own, ImageNet for COCO, the
``source`` task's for ``pretext``). Every task resolves them through :data:`SOURCES`,
so a task never special-cases where its pretraining data comes from.

A source gives:

- ``read(root, train, transform)``: a split of the real on-disk format;
- ``write_embedded(data_cache, **params)``: the generated stand-in, once, in the same
  format (an explicit step: :meth:`tasks.base.Task.prepare_data`);
- ``pretrain_set(root, encoder, augment, views)``: the training split under the
  pretraining augmentation, one transform per declared view
  (:class:`methods.base.ViewSpec`);
- ``heldout_set(root, encoder)``: the held-out split, unaugmented (pretext
  evaluation, figures, frozen-feature protocols).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision import transforms as T

__all__ = ["ImageSource", "SOURCES", "data_source", "pretrain_transform", "MultiView"]


def pretrain_transform(size: int, crop_scale, hflip: bool):
    """Image-level augmentation for pretraining: random resized crop (+ optional flip)."""
    ops = [T.RandomResizedCrop(size, scale=tuple(crop_scale),
                               interpolation=T.InterpolationMode.BICUBIC)]
    if hflip:
        ops.append(T.RandomHorizontalFlip())
    ops += [T.ToTensor(), T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)]
    return T.Compose(ops)


def eval_transform(size: int):
    return T.Compose([T.Resize(size), T.CenterCrop(size), T.ToTensor(),
                      T.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)])


class MultiView:
    """Several transforms of one sample -> a list of views, in order."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x):
        return [t(x) for t in self.transforms]


@dataclass(frozen=True)
class ImageSource:
    name: str
    read: Callable                      # (root, train: bool, transform) -> Dataset of (x, y)
    write_embedded: Callable            # (data_cache, **params) -> root
    modality: str = "2d"

    def view_transforms(self, encoder, augment, views) -> list:
        out = []
        for v in views:
            size = v.size or encoder.img_size
            scale = v.crop_scale or augment.rrc_scale
            out += [pretrain_transform(size, scale, augment.hflip) for _ in range(v.count)]
        return out

    def pretrain_set(self, root: Path, encoder, augment, views):
        tfs = self.view_transforms(encoder, augment, views)
        return self.read(root, True, tfs[0] if len(tfs) == 1 else MultiView(tfs))

    def heldout_set(self, root: Path, encoder):
        return self.read(root, False, eval_transform(encoder.img_size))


def _read_cifar100(root, train, transform):
    from .cifar import CIFAR100Folder

    return CIFAR100Folder(root, train=train, transform=transform)


def _read_imagenet(root, train, transform):
    from .imagefolder import build_imagefolder

    return build_imagefolder(root, "train" if train else "val", transform=transform)


def _write_cifar100(data_cache, **params):
    from .synthetic import ensure_embedded_cifar100

    return ensure_embedded_cifar100(data_cache, **params)


def _write_imagefolder(data_cache, **params):
    from .synthetic import ensure_embedded_imagefolder

    return ensure_embedded_imagefolder(data_cache, **params)


SOURCES: dict[str, object] = {
    "cifar100": ImageSource("cifar100", _read_cifar100, _write_cifar100),
    "imagenet": ImageSource("imagenet", _read_imagenet, _write_imagefolder),
}


def register_source(source) -> None:
    """Add a data set (an object with the :class:`ImageSource` methods)."""
    SOURCES[source.name] = source


def data_source(name: str):
    if name not in SOURCES:
        raise KeyError(f"unknown data set {name!r}; expected one of: {', '.join(sorted(SOURCES))}")
    return SOURCES[name]


@dataclass(frozen=True)
class DetectionSource:
    """COCO 2017's layout: generated and read by the detection task itself
    (:mod:`tasks.data.coco`); it is never a pretraining or held-out image set."""
    name: str = "coco"
    modality: str = "2d"

    def write_embedded(self, data_cache, **params):
        from .coco_synthetic import ensure_embedded_coco

        return ensure_embedded_coco(data_cache, **params)

    def _not_classification(self, *args, **kwargs):
        raise ValueError(f"data set {self.name} holds detection annotations: it is read by the "
                         f"coco task, not as a classification or pretraining set")

    read = pretrain_set = heldout_set = _not_classification


register_source(DetectionSource())


@dataclass(frozen=True)
class SignalSource:
    """PhysioNet/CinC 2018 records: generated here, preprocessed, split and read by the
    eeg task itself (:mod:`tasks.eeg`, :mod:`tasks.data.physionet2018`)."""
    name: str = "physionet2018"
    modality: str = "1d"

    def write_embedded(self, data_cache, n_training: int, n_test: int, hours: float = 1.0,
                       seed: int = 0):
        from .physionet_synthetic import GENERATOR_VERSION, write_physionet_records

        folder = (Path(data_cache) / f"synthetic-physionet2018-v{GENERATOR_VERSION}-"
                  f"tr{int(n_training)}-te{int(n_test)}-h{float(hours):g}-s{int(seed)}")
        return write_physionet_records(folder, n_training, n_test, hours, seed)

    def _by_the_task(self, *args, **kwargs):
        raise ValueError(f"data set {self.name} is split by subject and read by the eeg task")

    read = pretrain_set = heldout_set = _by_the_task


register_source(SignalSource())
