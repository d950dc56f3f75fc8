"""Figures 4-6 from a pretrained PART checkpoint (pretrained first if not cached).

    python -m benchmarks.figures [--method part] [--preset tiny] [--images 4]

- Fig. 4, reconstruction: one reference patch is fixed at its true position (the
  origin of the reconstruction) and every other patch j is placed at the reference
  centre plus the predicted (dx, dy) of the pair (ref, j) times the reference size,
  beside the same patches placed at their true positions. The paper fixes "one random
  reference patch": the default draws it at random per image (from the figure's seed);
  ``--reference central`` takes the patch nearest the image centre. The reference's own
  self-pair prediction (ref, ref), never a training target, is not used.
- Fig. 5, uncertainty: one target patch is placed from every reference patch; the
  spread of those placements is the patch's uncertainty.
- Fig. 6, symmetry: the N x N matrices of predicted and true dx, dy, in sampling order
  and sorted by position (top-left to bottom-right); the antisymmetry score
  ||M + M^T|| / ||M|| over the off-diagonal entries is 0 for a perfectly antisymmetric
  matrix and 2 for a symmetric one. The diagonal (a patch paired with itself) is left
  out: its true value is 0 and its prediction is not a trained pair.

Images are held-out images of the task's data; PNGs go to ``results/<preset>/figures/``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


REFERENCES = ("random", "central")


def antisymmetry(m: torch.Tensor) -> float:
    """``||M + M^T|| / ||M||`` over the off-diagonal entries of a square matrix."""
    off = ~torch.eye(m.shape[0], dtype=torch.bool, device=m.device)
    return float((m + m.T)[off].norm() / m[off].norm().clamp_min(1e-12))


def pick_reference(centres: np.ndarray, shape, reference: str = "random",
                   generator: torch.Generator | None = None) -> int:
    """Index of Fig. 4's reference patch among ``centres`` (N, 2) (x, y): a uniformly
    random one, or the one nearest the centre of an image of ``shape`` (h, w)."""
    if reference == "random":
        return int(torch.randint(len(centres), (1,), generator=generator))
    if reference == "central":
        h, w = shape
        return int(np.argmin(((np.asarray(centres) - [w / 2, h / 2]) ** 2).sum(-1)))
    raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")


def reconstruction_centres(centres: np.ndarray, sizes: np.ndarray, pred: np.ndarray,
                           ref: int) -> np.ndarray:
    """Fig. 4's placements (N, 2): patch j at ``centres[ref] + pred[ref, j, :2] *
    sizes[ref]``, and the reference itself at its true centre (the origin)."""
    placed = centres[ref] + np.asarray(pred)[ref, :, :2] * sizes[ref]
    placed[ref] = centres[ref]
    return placed


def _unnormalise(img: torch.Tensor) -> np.ndarray:
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    mean = torch.tensor(IMAGENET_DEFAULT_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_DEFAULT_STD)[:, None, None]
    return (img * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def place_patches(patches: np.ndarray, centres: np.ndarray, sizes: np.ndarray, shape,
                  margin: int) -> np.ndarray:
    """Paste (N, P, P, 3) patches, each resized to its box size, centred at ``centres``
    on a grey canvas of the image's shape plus a margin (predictions may fall outside)."""
    import torch.nn.functional as F

    h, w = shape
    canvas = np.full((h + 2 * margin, w + 2 * margin, 3), 0.5)
    for patch, (cx, cy), (bw, bh) in zip(patches, centres, sizes):
        pw, ph = max(1, int(round(bw))), max(1, int(round(bh)))
        t = torch.from_numpy(patch).permute(2, 0, 1)[None].float()
        resized = F.interpolate(t, size=(ph, pw), mode="nearest")[0].permute(1, 2, 0).numpy()
        x0 = int(round(cx - pw / 2)) + margin
        y0 = int(round(cy - ph / 2)) + margin
        xs, ys = max(x0, 0), max(y0, 0)
        xe, ye = min(x0 + pw, canvas.shape[1]), min(y0 + ph, canvas.shape[0])
        if xe > xs and ye > ys:
            canvas[ys:ye, xs:xe] = resized[ys - y0:ye - y0, xs - x0:xe - x0]
    return canvas


def make_figures(method, images: torch.Tensor, out_dir: Path, tag: str, seed: int = 0,
                 reference: str = "random") -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    boxes = method.sample_boxes(images, g)
    pred, true = method.pair_matrices(images, boxes)          # (B, N, N, out)
    patches = method.extract(images, boxes)                    # (B, N, C, P, P)
    centres = (boxes[..., :2] + boxes[..., 2:] / 2).numpy()
    sizes = boxes[..., 2:].numpy()
    b, n = boxes.shape[:2]
    h, w = images.shape[-2:]
    margin = w // 4
    summary = {}

    # Fig. 4: reconstruction around one fixed reference patch per image
    fig, axes = plt.subplots(3, b, figsize=(2.2 * b, 6.6), squeeze=False)
    refs = []
    for i in range(b):
        ref = pick_reference(centres[i], (h, w), reference, g)
        refs.append(ref)
        p_img = np.stack([_unnormalise(p) for p in patches[i]])
        placed = reconstruction_centres(centres[i], sizes[i], pred[i].numpy(), ref)
        axes[0, i].imshow(_unnormalise(images[i]))
        axes[1, i].imshow(place_patches(p_img, centres[i], sizes[i], (h, w), margin))
        axes[2, i].imshow(place_patches(p_img, placed, sizes[i], (h, w), margin))
        for r in range(3):
            axes[r, i].set_xticks([]), axes[r, i].set_yticks([])
    axes[0, 0].set_ylabel("image")
    axes[1, 0].set_ylabel("patches at true\npositions")
    axes[2, 0].set_ylabel("placed by predicted\n(dx, dy)")
    fig.suptitle(f"Reconstruction ({tag})")
    fig.tight_layout()
    fig.savefig(out_dir / f"fig4_reconstruction_{tag}.png", dpi=110)
    plt.close(fig)
    summary["reconstruction_reference"] = refs

    # Fig. 5: uncertainty of three target patches of the first image
    i = 0
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.2))
    spreads = []
    for ax, tgt in zip(axes, np.linspace(0, n - 1, 3).astype(int)):
        refs = np.arange(n) != tgt
        placed = centres[i, refs] + pred[i, refs, tgt, :2].numpy() * sizes[i, refs]
        spread = float(np.linalg.norm(placed - placed.mean(0), axis=1).mean())
        spreads.append(spread)
        ax.imshow(_unnormalise(images[i]), extent=(0, w, h, 0))
        ax.scatter(placed[:, 0], placed[:, 1], s=8, c="yellow", edgecolors="k", linewidths=0.3,
                   label="placed from each reference")
        ax.scatter(*centres[i, tgt], marker="x", s=80, c="red", label="true centre")
        ax.set_xlim(-margin, w + margin), ax.set_ylim(h + margin, -margin)
        ax.set_title(f"patch {tgt}: spread {spread:.1f} px", fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    axes[0].legend(fontsize=6, loc="lower left")
    fig.suptitle(f"Patch uncertainty ({tag})")
    fig.tight_layout()
    fig.savefig(out_dir / f"fig5_uncertainty_{tag}.png", dpi=110)
    plt.close(fig)
    summary["uncertainty_spread_px"] = spreads

    # Fig. 6: symmetry of the predicted matrices
    # raster order: rows of one patch height, left to right within a row
    order = np.lexsort((centres[i, :, 0], np.floor(centres[i, :, 1] / method.patch_size)))
    fig, axes = plt.subplots(2, 4, figsize=(12, 6.2))
    for row, (k, name) in enumerate(((0, "dx"), (1, "dy"))):
        p, t = pred[i, :, :, k], true[i, :, :, k]
        vmax = float(t.abs().max())
        mats = [(t, f"true {name}"), (p, f"predicted {name}"),
                (t[order][:, order], f"true {name}, ordered"),
                (p[order][:, order], f"predicted {name}, ordered")]
        for ax, (m, title) in zip(axes[row], mats):
            ax.imshow(m.numpy(), cmap="RdBu_r", vmin=-vmax, vmax=vmax)
            ax.set_title(f"{title}\nantisym. {antisymmetry(m):.2f}", fontsize=9)
            ax.set_xticks([]), ax.set_yticks([])
        summary[f"antisymmetry_pred_{name}"] = antisymmetry(p)
    fig.suptitle(f"Negative symmetry of the N x N predictions ({tag})")
    fig.tight_layout()
    fig.savefig(out_dir / f"fig6_symmetry_{tag}.png", dpi=110)
    plt.close(fig)
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.figures", description=__doc__.split("\n\n")[0])
    p.add_argument("--method", nargs="+", default=["part", "part-grid"],
                   help="PART variants to draw (default: part and part-grid)")
    p.add_argument("--task", default="cifar100", help="whose data and encoder (default cifar100)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--reference", choices=REFERENCES, default="random",
                   help="Fig. 4's fixed reference patch: random (default, as the paper) or "
                        "the one nearest the image centre")
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache", default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    args = p.parse_args(argv)

    from pipeline.cell import pretrained_method
    from engine.cli import run_command
    from engine.records import results_dir

    def body():
        for name in args.method:
            # the held-out images of the pretext task on args.task's data
            method, task = pretrained_method(name, "pretext", preset=args.preset, seed=args.seed,
                                             data_root=args.data_root, cache=args.cache,
                                             cfg_options={"tasks.pretext.source": args.task})
            held = task.heldout_set()
            images = torch.stack([held[i][0] for i in range(args.images)])
            out = Path(args.out) if args.out else results_dir(args.preset) / "figures"
            summary = make_figures(method, images, out, name, args.seed, args.reference)
            print(f"[figures] {name}: {out}/fig4-6_*_{name}.png  " +
                  "  ".join(f"{k}={v if not isinstance(v, list) else [round(x, 1) for x in v]}"
                            if not isinstance(v, float) else f"{k}={v:.3f}"
                            for k, v in summary.items()))

    return run_command(body, args.debug)


if __name__ == "__main__":
    sys.exit(main())
