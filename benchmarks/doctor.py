"""``make doctor``: what is installed, and whether mmcv's compiled ops compute right.

Prints the versions the records will carry, then checks RoIAlign and NMS from
``mmcv.ops`` on tiny inputs whose answers are known by hand. Exit code 1 if a check
fails, so CI stops before the tests.
"""
from __future__ import annotations

import sys


def check_mmcv_ops() -> list[str]:
    import torch
    from mmcv.ops import RoIAlign, nms

    problems = []
    # RoIAlign on a ramp image: the value at (x, y) is x, so the average over a box is
    # its centre's x coordinate, whatever the sampling.
    img = torch.arange(8.0).repeat(8, 1)[None, None]            # (1, 1, 8, 8), value = x
    rois = torch.tensor([[0.0, 2.0, 1.0, 6.0, 5.0]])            # x from 2 to 6 -> centre 4
    out = RoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=2, aligned=True)(img, rois)
    expected = torch.tensor([[[[2.5, 4.5], [2.5, 4.5]]]])       # bin centres at x=3 and x=5, minus 0.5
    if not torch.allclose(out, expected, atol=1e-5):
        problems.append(f"RoIAlign gave {out.flatten().tolist()}, expected {expected.flatten().tolist()}")

    # NMS: two heavily overlapping boxes and one apart; the weaker overlapping one goes.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [20.0, 20.0, 30.0, 30.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    _, keep = nms(boxes, scores, iou_threshold=0.5)
    if keep.tolist() != [0, 2]:
        problems.append(f"nms kept {keep.tolist()}, expected [0, 2]")
    return problems


def main() -> int:
    from engine.records import hardware, versions

    for name, version in versions().items():
        print(f"{name:>14s}  {version or 'NOT INSTALLED'}")
    hw = hardware()
    print(f"{'hardware':>14s}  {hw['cpu_count']} CPUs, GPUs: {hw.get('gpus', 'none')}")
    try:
        problems = check_mmcv_ops()
    except Exception as exc:  # import failure: ops not compiled
        problems = [f"mmcv.ops unusable: {type(exc).__name__}: {exc}"]
    for p in problems:
        print(f"FAIL  {p}")
    if not problems:
        print("ok    mmcv.ops RoIAlign and nms give the hand-computed answers")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
