"""Step-time and extraction benchmarks, printed as ratios measured in one run.

    python -m benchmarks.speed [--quick] [--device cpu|cuda] [--repeats 5]
    python -m benchmarks.speed --detector [--preset tiny]

1. Training step (forward + backward) of each method against a plain timm ViT
   (grid patches, position embeddings, linear head, cross-entropy) on the same batch:
   ViT-S/16 at 224 with batch 8 and 2048 pairs; ViT-B/16 with batch 2 and 4802 pairs.
2. Patch extraction: one batched call against a Python loop over patches that cuts
   the same boxes one at a time.
3. ``--detector``: seconds per training iteration (data preprocessing, forward,
   backward, AdamW step) of the preset's ViTDet Mask R-CNN at its batch size, on
   batches of the embedded COCO-layout scenes through the training pipeline.

Times are medians over ``--repeats`` after a warm-up; ``--quick`` uses the tiny
preset's model size instead (seconds, for a smoke test).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def _median_time(fn, repeats: int, sync) -> float:
    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_steps(arch: str, img: int, patch: int, batch: int, pairs: int, repeats: int,
                device: str, methods: list[str]) -> list[tuple[str, float, float]]:
    from methods import build_method
    from methods.backbone import build_encoder

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    images = torch.randn(batch, 3, img, img, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)
    plain = build_encoder(arch, img_size=img, patch_size=patch, pos_embed="learn",
                          num_classes=1000).to(device)

    def plain_step():
        plain.zero_grad(set_to_none=True)
        F.cross_entropy(plain(images), labels).backward()

    base = _median_time(plain_step, repeats, sync)
    rows = [("plain ViT", base, 1.0)]
    enc = dict(arch=arch, img_size=img, patch_size=patch)
    for name in methods:
        cfg = dict(encoder=enc)
        if name.startswith("part"):
            cfg["num_pairs"] = pairs
        model = build_method(name, **cfg).to(device)

        def step():
            model.zero_grad(set_to_none=True)
            model(images)["loss"].backward()

        t = _median_time(step, repeats, sync)
        rows.append((name, t, t / base))
        del model
    return rows


def bench_extraction(batch: int, img: int, patch: int, num: int, repeats: int, device: str):
    from methods.sampling import extract_patches, sample_offgrid_boxes

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    images = torch.randn(batch, 3, img, img, device=device)
    boxes = sample_offgrid_boxes(batch, num, (img, img), patch, device=device)

    def batched():
        extract_patches(images, boxes, patch)

    def loop():
        out = torch.empty(batch, num, 3, patch, patch, device=device)
        for b in range(batch):
            for n in range(num):
                out[b, n] = extract_patches(images[b:b + 1], boxes[b:b + 1, n:n + 1], patch)[0, 0]

    t_batched = _median_time(batched, repeats, sync)
    t_loop = _median_time(loop, max(1, repeats // 2), sync)
    return t_batched, t_loop


def bench_detector(preset: str, repeats: int, device: str, cache=None) -> tuple[float, int, dict]:
    """Median seconds per training iteration of the preset's COCO detector."""
    from mmengine.dataset import pseudo_collate

    from benchmarks.run import default_cache, make_plan
    from tasks import build_task
    from tasks.data.coco import build_coco_dataset, train_pipeline
    from tasks.detection_config import build_detector

    plan = make_plan("part", "coco", preset=preset)
    task = build_task(plan, cache or default_cache())
    det, ft = plan.detector, plan.finetune
    data = build_coco_dataset(task.root, "train", train_pipeline(
        det.img_size, ft.resize_ratio, ft.pad_val, ft.hflip), task.classes, ft.min_size)
    bs = plan.finetune_batch()
    batches = [pseudo_collate([data[b * bs + i] for i in range(bs)]) for b in range(3)]
    model = build_detector(det, plan.encoder, len(task.classes)).to(device).train()
    optim = torch.optim.AdamW(model.parameters(), lr=ft.lr, weight_decay=ft.weight_decay)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    state = dict(i=0)

    def step():
        batch = model.data_preprocessor(batches[state["i"] % len(batches)], True)
        state["i"] += 1
        losses = model.loss(batch["inputs"], batch["data_samples"])
        loss, _ = model.parse_losses(losses)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()

    return _median_time(step, repeats, sync), bs, det


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="tiny sizes, a smoke test")
    p.add_argument("--methods", nargs="+", default=None,
                   help="methods to time (default: every registered method that pretrains)")
    p.add_argument("--detector", action="store_true",
                   help="only time the preset's COCO detector training iteration")
    p.add_argument("--preset", default="tiny", help="preset whose detector --detector times")
    args = p.parse_args(argv)
    if args.detector:
        print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
        t, bs, det = bench_detector(args.preset, args.repeats, args.device)
        print(f"\n{args.preset} preset Mask R-CNN ({det.img_size} px, batch {bs}): "
              f"{t:.3f} s per training iteration (median of {args.repeats})")
        return 0
    from methods import METHODS

    methods = args.methods or [n for n, (cls, _) in METHODS.items() if cls.pretrains]
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.quick:
        settings = [("vit_micro", 32, 4, 8, 512)]
    else:
        settings = [("vit_small", 224, 16, 8, 2048), ("vit_base", 224, 16, 2, 4802)]
    for arch, img, patch, batch, pairs in settings:
        print(f"\n{arch} at {img}, patch {patch}, batch {batch}, {pairs} pairs (forward+backward)")
        for name, t, ratio in bench_steps(arch, img, patch, batch, pairs, args.repeats,
                                          args.device, methods):
            print(f"  {name:>20s}: {t * 1000:8.1f} ms   x{ratio:.2f} of plain ViT")
    img, patch = (32, 4) if args.quick else (224, 16)
    t_b, t_l = bench_extraction(8, img, patch, (img // patch) ** 2, args.repeats, args.device)
    print(f"\nextraction, batch 8, {(img // patch) ** 2} patches of {patch}x{patch} at {img}:")
    print(f"  batched {t_b * 1000:.2f} ms, per-patch loop {t_l * 1000:.1f} ms: "
          f"batched is {t_l / t_b:.0f}x faster")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
