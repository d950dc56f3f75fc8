"""ImageNet-style ImageFolder data: ``ROOT/{train,val}/<class>/<image>``.

:func:`build_imagefolder` checks the layout of both splits up front (so that a bad
root fails with one clear line instead of a torchvision traceback) and returns
``torchvision.datasets.ImageFolder`` for the requested split.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.errors import DataError

SPLITS = ("train", "val")
_LAYOUT = "ROOT/{train,val}/<class>/<image>"


def _image_extensions() -> tuple[str, ...]:
    from torchvision.datasets.folder import IMG_EXTENSIONS

    return tuple(e.lower() for e in IMG_EXTENSIONS)


def _class_dirs(split_dir: Path) -> list[str]:
    """Class folder names as ImageFolder finds them (sorted, non-hidden dirs)."""
    with os.scandir(split_dir) as it:
        return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def _has_image(folder: Path, exts: tuple[str, ...]) -> bool:
    """True as soon as one file with an image extension is found (recursively)."""
    for dirpath, _dirnames, filenames in os.walk(folder, followlinks=True):
        for name in filenames:
            if name.lower().endswith(exts):
                return True
    return False


def validate_imagefolder(root) -> list[str]:
    """Check ``ROOT/{train,val}/<class>/<image>``; return the (shared) class list."""
    root = Path(root)
    where = f"ImageFolder root {root}: expected {_LAYOUT.replace('ROOT', str(root))}"
    if not root.is_dir():
        raise DataError(f"{where}; the root directory does not exist")
    exts = _image_extensions()
    classes: dict[str, list[str]] = {}
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            raise DataError(f"{where}; missing {split_dir}")
        names = _class_dirs(split_dir)
        if not names:
            raise DataError(f"{where}; {split_dir} has no class subfolders")
        for name in names:
            if not _has_image(split_dir / name, exts):
                raise DataError(
                    f"{where}; class folder {split_dir / name} has no image files "
                    f"({', '.join(exts)})"
                )
        classes[split] = names
    if classes["train"] != classes["val"]:
        only_train = sorted(set(classes["train"]) - set(classes["val"]))
        only_val = sorted(set(classes["val"]) - set(classes["train"]))
        raise DataError(
            f"{where} with the same class folders in both splits; "
            f"{root / 'train'} has {len(classes['train'])} classes, {root / 'val'} has "
            f"{len(classes['val'])}; only in train: {only_train[:5]}, only in val: {only_val[:5]}"
        )
    return classes["train"]


def load_image(path) -> "Image.Image":
    """ImageFolder's loader (PIL, RGB), with a damaged file answered by one
    :class:`DataError` naming it. A corrupt image stops the run rather than being
    skipped: a benchmark number is over the data set as published, a skipped image
    would silently change it (and a truncated copy rarely damages one file only). The
    fix is to replace the file; the same command then resumes from the last checkpoint."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:  # PIL's errors for a damaged file
        raise DataError(f"cannot read image {path} ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())}); replace the damaged file (or remove it) "
                        f"and rerun the same command") from None


def build_imagefolder(root, split: str, transform=None):
    """``torchvision.datasets.ImageFolder`` for ``root/<split>`` (split 'train' or 'val').

    Both splits are validated first; every layout problem raises
    :class:`engine.errors.DataError` naming the expected layout and the bad path.
    """
    if split not in SPLITS:
        raise DataError(
            f"ImageFolder root {root}: expected split 'train' or 'val' "
            f"(layout {_LAYOUT}); got {split!r}"
        )
    validate_imagefolder(root)
    from torchvision.datasets import ImageFolder

    return ImageFolder(str(Path(root) / split), transform=transform, loader=load_image)
