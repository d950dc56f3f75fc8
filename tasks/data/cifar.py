"""CIFAR-100 reader for torchvision's on-disk python format, without checksums.

Layout: ``ROOT/cifar-100-python/{train,test,meta}``. ``train``/``test`` are pickled
dicts with ``data`` (uint8, N x 3*S*S, channel-major: the R plane, then G, then B,
each row-major; S = 32 for the official files) and ``fine_labels``; ``meta`` holds
``fine_label_names``. The official files were pickled by Python 2, so they are
loaded with ``encoding='latin1'``. Row lengths other than 3072 are accepted as
long as each row is a square RGB image (the synthetic writer uses this for other
sizes).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch.utils.data
from PIL import Image

from engine.errors import DataError

_FOLDER = "cifar-100-python"
_FILES = ("train", "test", "meta")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _str(x) -> str:
    return x.decode("latin1") if isinstance(x, bytes) else str(x)


class CIFAR100Folder(torch.utils.data.Dataset):
    """CIFAR-100 (or anything written in its format) read from ``root``.

    ``__getitem__`` returns ``(PIL.Image RGB, int label)``, passed through
    ``transform`` if given. Attributes: ``data`` (uint8 ``(N, H, W, 3)``),
    ``targets`` (list of int), ``classes`` (fine label names).
    """

    def __init__(self, root, train: bool, transform=None):
        self.root = Path(root)
        self.train = bool(train)
        self.transform = transform
        folder = self.root / _FOLDER
        layout = (f"expected {folder}/{{{','.join(_FILES)}}} (torchvision's on-disk format)")
        if not self.root.is_dir():
            raise DataError(f"CIFAR-100 root {self.root}: {layout}; the root directory does not exist")
        if not folder.is_dir():
            raise DataError(f"CIFAR-100 root {self.root}: {layout}; missing {folder}")
        for name in _FILES:
            if not (folder / name).is_file():
                raise DataError(f"CIFAR-100 root {self.root}: {layout}; missing {folder / name}")

        meta = self._load(folder / "meta")
        if "fine_label_names" not in meta:
            raise DataError(
                f"CIFAR-100 file {folder / 'meta'}: expected a dict with key 'fine_label_names'; "
                f"found keys {sorted(meta)}"
            )
        self.classes = [_str(c) for c in meta["fine_label_names"]]

        path = folder / ("train" if self.train else "test")
        batch = self._load(path)
        missing = [k for k in ("data", "fine_labels") if k not in batch]
        if missing:
            raise DataError(
                f"CIFAR-100 file {path}: expected a dict with keys 'data' and 'fine_labels'; "
                f"missing {missing}, found keys {sorted(batch)}"
            )
        self.data = self._decode_images(path, batch["data"])
        try:
            targets = [int(t) for t in batch["fine_labels"]]
        except (TypeError, ValueError) as e:
            raise DataError(
                f"CIFAR-100 file {path}: expected 'fine_labels' to be a list of ints ({_one_line(e)})"
            ) from None
        if len(targets) != self.data.shape[0]:
            raise DataError(
                f"CIFAR-100 file {path}: expected one fine label per image; "
                f"{len(targets)} labels for {self.data.shape[0]} images"
            )
        bad = [t for t in targets if not 0 <= t < len(self.classes)]
        if bad:
            raise DataError(
                f"CIFAR-100 file {path}: expected fine labels in [0, {len(self.classes)}) "
                f"(the number of names in {folder / 'meta'}); found {bad[0]}"
            )
        self.targets = targets

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _load(path: Path) -> dict:
        try:
            with open(path, "rb") as f:
                obj = pickle.load(f, encoding="latin1")
        except Exception as e:  # truncated, corrupt, or not a pickle at all
            raise DataError(
                f"CIFAR-100 file {path}: could not unpickle it ({type(e).__name__}: {_one_line(e)}); "
                f"expected a pickled dict as in torchvision's cifar-100-python format "
                f"(the file is corrupt or truncated)"
            ) from None
        if not isinstance(obj, dict):
            raise DataError(
                f"CIFAR-100 file {path}: expected a pickled dict; got {type(obj).__name__}"
            )
        return {_str(k): v for k, v in obj.items()}

    @staticmethod
    def _decode_images(path: Path, data) -> np.ndarray:
        try:
            arr = np.asarray(data)
        except Exception as e:
            raise DataError(f"CIFAR-100 file {path}: 'data' is not an array ({_one_line(e)})") from None
        if arr.ndim != 2:
            raise DataError(
                f"CIFAR-100 file {path}: expected 'data' of shape (N, 3*H*W); got shape {arr.shape}"
            )
        if arr.dtype != np.uint8:
            if not np.issubdtype(arr.dtype, np.integer) or (
                arr.size and (arr.min() < 0 or arr.max() > 255)
            ):
                raise DataError(
                    f"CIFAR-100 file {path}: expected 'data' of uint8 pixels; got dtype {arr.dtype}"
                )
            arr = arr.astype(np.uint8)
        n, row = arr.shape
        side = int(round((row / 3) ** 0.5)) if row % 3 == 0 else 0
        if row % 3 != 0 or side * side * 3 != row or side == 0:
            raise DataError(
                f"CIFAR-100 file {path}: expected each row of 'data' to be a square RGB image "
                f"(3*S*S values, 3072 for 32x32); got rows of {row} values"
            )
        return np.ascontiguousarray(arr.reshape(n, 3, side, side).transpose(0, 2, 3, 1))

    # ------------------------------------------------------------------ dataset
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, index: int):
        img = Image.fromarray(self.data[index])  # uint8 (H, W, 3) -> mode RGB
        target = self.targets[index]
        if self.transform is not None:
            img = self.transform(img)
        return img, target

    def __repr__(self) -> str:
        split = "train" if self.train else "test"
        return (f"CIFAR100Folder(root={str(self.root)!r}, split={split}, n={len(self)}, "
                f"classes={self.num_classes}, size={self.data.shape[1]})")
