"""Step-time, memory, data-pipeline and extraction benchmarks, as ratios measured in one run.

    python -m benchmarks.speed [--quick] [--device cpu|cuda] [--repeats 7] [--only SECTION ...]
    python -m benchmarks.speed --detector [--preset tiny]

Sections (``--only``, names of :data:`SECTIONS`; by default all but ``runner``), each
written as a Markdown table to ``results/speed/<device>.md`` (``--out`` elsewhere,
``--no-write`` not at all):

1. ``steps``: each method's training step against a plain timm ViT's on the same
   batch, the median ratio of interleaved rounds with its interquartile range
   (:func:`bench_steps`, :func:`interleaved`, :func:`ratio_summary`); MFU on a GPU;
2. ``memory``: peak memory of one step of each method (:func:`bench_memory`);
3. ``pairs``: PART's step against the plain step as the number of pairs grows
   (:func:`bench_pairs`);
4. ``data``: each tiny-preset task's pretraining data pipeline samples/s beside the
   pretraining step's (:func:`bench_data`);
5. ``extraction``: one batched patch-extraction call against a Python loop
   (:func:`bench_extraction`);
6. ``runner``: training iterations through the suite's own Runner (:func:`bench_runner`).

``--detector`` times one training iteration of the preset's ViTDet Mask R-CNN
(:func:`bench_detector`). ``--precision`` (default ``auto``, :mod:`engine.precision`) is
the autocast of every timed forward pass and the Runner's precision; one the device
cannot run exits with status 2. ``--quick`` uses tiny model sizes (seconds, a smoke
test). The table's header gives the machine's load average before and after.

Details: docs/reference/speed.md.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import os
import re
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 0.03  # two identical computations must read the same within this


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


def _sync(device: str):
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def _time_once(fn, sync) -> float:
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


# ---------------------------------------------------------------- ratio arithmetic
def round_ratios(plain_times, method_times) -> list[float]:
    """Per-round ratios: round r's method time over round r's plain time."""
    if len(plain_times) != len(method_times):
        raise ValueError("one plain time per method time (interleaved rounds)")
    return [m / p for p, m in zip(plain_times, method_times)]


def ratio_summary(ratios) -> tuple[float, float, float]:
    """(median, first quartile, third quartile) of per-round ratios (inclusive quartiles:
    for 1..5 they are 2 and 4)."""
    ratios = sorted(float(r) for r in ratios)
    if len(ratios) == 1:
        return ratios[0], ratios[0], ratios[0]
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return statistics.median(ratios), q1, q3


def same_within(a: float, b: float, tol: float = TOLERANCE) -> bool:
    """Whether two readings of one computation agree: |a/b - 1| <= tol."""
    return abs(a / b - 1.0) <= tol


def interleaved(plain_fn, method_fn, rounds: int, sync, inner: int = 1) -> tuple[list[float], list[float]]:
    """(plain times, method times), one of each per round, after one warm-up call of
    each. The order alternates (plain first in even rounds, the method first in odd
    ones), so whatever favours the first or the second call of a round (caches, a
    load that builds up) does not lean on one side of the ratio. A reading is the
    fastest of ``inner`` consecutive calls: on a shared machine other processes only
    ever add time, so the minimum is the least disturbed reading."""
    plain_fn(), method_fn()
    sync()
    plain, method = [], []
    for r in range(rounds):
        if r % 2 == 0:
            plain.append(min(_time_once(plain_fn, sync) for _ in range(inner)))
            method.append(min(_time_once(method_fn, sync) for _ in range(inner)))
        else:
            method.append(min(_time_once(method_fn, sync) for _ in range(inner)))
            plain.append(min(_time_once(plain_fn, sync) for _ in range(inner)))
    return plain, method


# ---------------------------------------------------------------- memory and FLOPs
def _rss_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _release_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap pages back to the system
    except (OSError, AttributeError):
        pass


def peak_step_memory_mb(build_and_step, device: str) -> float | None:
    """Peak memory of ``build_and_step()`` (which builds a model and runs its steps)
    above what the process held before it; None where it cannot be read."""
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        build_and_step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    _release_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return None
    before = _rss_kb("VmRSS")
    build_and_step()
    peak = _rss_kb("VmHWM")
    _release_memory()
    return None if before is None or peak is None else (peak - before) / 1024


def step_flops(step) -> float:
    """Model FLOPs of one call of ``step`` (forward + backward), by torch's counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    from engine.records import _cpu_model

    return _cpu_model()


def device_slug(device: str) -> str:
    return "cpu" if device != "cuda" else re.sub(r"[^a-z0-9]+", "-", device_name(device).lower()).strip("-")


# ---------------------------------------------------------------- training steps
def _plain(arch, img, patch, device):
    from methods.backbone import build_encoder

    return build_encoder(arch, img_size=img, patch_size=patch, pos_embed="learn",
                         num_classes=1000).to(device)


def _method(name, arch, img, patch, pairs, device):
    from methods import build_method

    cfg = dict(encoder=dict(arch=arch, img_size=img, patch_size=patch))
    if name.startswith("part"):
        cfg["num_pairs"] = pairs
    return build_method(name, **cfg).to(device)


AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolved_precision(requested: str, device: str) -> str:
    """``requested`` (auto, bf16, fp16, fp32) resolved on ``device`` as a run would."""
    from engine.precision import DeviceCaps, resolve_precision

    caps = DeviceCaps.probe() if device == "cuda" else DeviceCaps(cuda=False)
    return resolve_precision(requested, caps)


def _autocast(images, precision: str):
    """The forward pass's autocast for a resolved precision (none for fp32)."""
    dtype = AUTOCAST.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=images.device.type, dtype=dtype)


def _plain_step(model, images, labels, precision: str = "fp32"):
    def step():
        model.zero_grad(set_to_none=True)
        with _autocast(images, precision):
            loss = F.cross_entropy(model(images), labels)
        loss.backward()
    return step


def _method_step(model, images, precision: str = "fp32"):
    def step():
        model.zero_grad(set_to_none=True)
        with _autocast(images, precision):
            loss = model(images)["loss"]
        loss.backward()
    return step


class _SyntheticSamples(torch.utils.data.Dataset):
    """``length`` samples cycling over ``images``, as the Runner's models receive them
    (not ``tasks.base.RunnerSamples``: importing ``tasks`` imports MMDetection, which a
    GPU machine carrying only the training stack need not have)."""

    def __init__(self, images: torch.Tensor, length: int):
        self.images, self.length = images, int(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return {"inputs": self.images[i % len(self.images)], "data_samples": 0}


def bench_runner(arch: str, img: int, patch: int, batch: int, pairs: int, steps: int, device: str,
                 methods: list[str], precision: str, workers: int, log_interval: int = 50):
    """Yields, per method, the throughput entry of ``steps`` training iterations through
    :func:`engine.runner.build_runner` (section 6 of the module docstring), with the
    method's name and the Runner's wall time including its set-up."""
    import tempfile

    from engine.plan import LoaderPlan, PretrainPlan
    from engine.pretrain import PRETRAIN_PARAM_RULE, PretrainModel
    from engine.runner import build_runner
    from engine.throughput import read_throughput

    if (device == "cuda") != torch.cuda.is_available():
        raise ValueError("the runner section trains on this process's device: --device must "
                         "be cuda exactly when a GPU is present")
    images = torch.randn(batch, 3, img, img)  # host memory: the loader pins and copies it
    data = _SyntheticSamples(images, batch * steps)
    schedule = PretrainPlan(epochs=1, global_batch_size=batch, base_lr=1.5e-4,
                            lr_reference_batch=None, warmup_epochs=0)
    loader = LoaderPlan(num_workers=workers, log_interval=min(log_interval, steps), precision=precision)
    for name in methods:
        model = _method(name, arch, img, patch, pairs, "cpu")
        with tempfile.TemporaryDirectory(prefix=f"speed-{name}-") as work:
            t0 = time.perf_counter()
            runner = build_runner(PretrainModel(model), work, data, schedule=schedule,
                                  batch_per_process=batch, loader=loader,
                                  experiment_name=f"speed-{name}", param_rule=PRETRAIN_PARAM_RULE)
            runner.train()
            wall = time.perf_counter() - t0
            entry = read_throughput(work).get("train") or {}
        del runner, model
        _release_memory()
        if device == "cuda":
            torch.cuda.empty_cache()
        yield dict(entry, name=name, wall_s=wall)


def bench_steps(arch: str, img: int, patch: int, batch: int, pairs: int, repeats: int,
                device: str, methods: list[str], inner: int = 1, precision: str = "fp32"):
    """Yields one row per method as it is measured (``plain ViT`` against itself first): median step time,
    median per-round ratio against the plain step and its quartiles; on a GPU the
    step's FLOPs and MFU."""
    from engine.throughput import device_peak_flops

    sync = _sync(device)
    images = torch.randn(batch, 3, img, img, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)
    plain = _plain(arch, img, patch, device)
    plain_step = _plain_step(plain, images, labels, precision)
    peak = device_peak_flops(device_name(device)) if device == "cuda" else None
    for name in ["plain ViT", *methods]:
        if name == "plain ViT":  # the same computation on both sides: the noise floor
            model, step = None, plain_step
        else:
            model = _method(name, arch, img, patch, pairs, device)
            step = _method_step(model, images, precision)
        pt, mt = interleaved(plain_step, step, repeats, sync, inner)
        med, q1, q3 = ratio_summary(round_ratios(pt, mt))
        row = dict(name=name, seconds=statistics.median(mt), ratio=med, q1=q1, q3=q3,
                   plain_seconds=statistics.median(pt), samples_per_second=batch / statistics.median(mt),
                   flops=None, mfu=None)
        if device == "cuda":
            row["flops"] = step_flops(step)
            if peak:
                row["mfu"] = row["flops"] / row["seconds"] / peak
        del model, step
        yield row


def identity_checks(rows: list[dict]) -> list[tuple[str, float, bool]]:
    """(what, reading, agrees) for the computations that are the same: the plain step
    against itself (ratio 1), and mp3 against mp3-nope (one pretraining)."""
    by = {r["name"]: r["ratio"] for r in rows}
    out = []
    if "plain ViT" in by:
        out.append(("plain ViT vs itself", by["plain ViT"], same_within(by["plain ViT"], 1.0)))
    if "mp3" in by and "mp3-nope" in by:
        out.append(("mp3 vs mp3-nope", by["mp3"] / by["mp3-nope"], same_within(by["mp3"], by["mp3-nope"])))
    return out


def bench_memory(arch, img, patch, batch, pairs, device, methods, precision: str = "fp32"):
    """Yields (name, peak MB of building the model and two steps) for the plain ViT and
    each method, on the same batch."""
    images = torch.randn(batch, 3, img, img, device=device)
    labels = torch.randint(0, 1000, (batch,), device=device)
    for name in ["plain ViT", *methods]:
        def run():
            if name == "plain ViT":
                step = _plain_step(_plain(arch, img, patch, device), images, labels, precision)
            else:
                step = _method_step(_method(name, arch, img, patch, pairs, device), images, precision)
            step()
            step()
        yield name, peak_step_memory_mb(run, device)


def bench_pairs(arch, img_sizes, patch, batch, pairs_list, repeats, device, method="part", inner=1,
                precision: str = "fp32"):
    """PART's step against the plain one, per (image size, pairs): yields rows of
    image size, pairs, seconds, median ratio and its quartiles, as they are measured."""
    sync = _sync(device)
    for img in img_sizes:
        images = torch.randn(batch, 3, img, img, device=device)
        labels = torch.randint(0, 1000, (batch,), device=device)
        plain = _plain(arch, img, patch, device)
        plain_step = _plain_step(plain, images, labels, precision)
        for pairs in pairs_list:
            model = _method(method, arch, img, patch, pairs, device)
            step = _method_step(model, images, precision)
            pt, mt = interleaved(plain_step, step, repeats, sync, inner)
            med, q1, q3 = ratio_summary(round_ratios(pt, mt))
            del model, step
            yield dict(img=img, pairs=pairs, seconds=statistics.median(mt), ratio=med, q1=q1, q3=q3)
        del plain, plain_step


def pairs_growth(rows, at: int = 2048) -> list[tuple[int, int, float, float]]:
    """(img, pairs, step growth, pair growth pairs/at) for pairs beyond ``at``; the step
    growth is the ratio to the plain step at ``pairs`` over the one at ``at`` (each taken
    against its own rounds' plain step, so a load that changed between rows cancels).
    Linear or better when the first is at most the second."""
    out = []
    for img in sorted({r["img"] for r in rows}):
        by = {r["pairs"]: r["ratio"] for r in rows if r["img"] == img}
        if at not in by:
            continue
        out += [(img, p, by[p] / by[at], p / at) for p in sorted(by) if p > at]
    return out


# ---------------------------------------------------------------- data pipeline
def bench_data(task: str, preset: str, device: str, method: str = "part", batches: int = 12,
               cache=None) -> dict:
    """The pretraining pipeline of ``task`` (decode + augment + sampling, through a
    DataLoader with the preset's workers and batch) against ``method``'s pretraining
    step (forward, backward, AdamW) at that batch, in samples/s."""
    from torch.utils.data import DataLoader

    from pipeline.cell import default_cache, make_plan
    from methods import build_method
    from tasks import build_task

    plan = make_plan(method, task, preset=preset)
    task_obj = build_task(plan, cache or default_cache())
    task_obj.prepare_data(lambda *_: None)
    views = plan.method.entry.cls.pretrain_views(**plan.method.config)
    dataset = task_obj.pretrain_dataset(views)
    batch, workers = plan.pretrain_batch(), plan.loader.num_workers
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                        drop_last=len(dataset) >= batch)
    n = min(batches, len(loader))
    it = iter(loader)
    t_start = time.perf_counter()
    first = next(it)
    t_first = time.perf_counter()  # worker start-up and the first batch, reported apart
    samples, t0 = 0, time.perf_counter()
    for _ in range(n - 1):
        b = next(it)
        samples += _batch_len(b)
    t_data = time.perf_counter() - t0
    del it, loader
    data_sps = samples / t_data if samples else _batch_len(first) / (t_first - t_start)

    model = build_method(plan.method.name, encoder=plan.encoder.as_kwargs(),
                         **plan.method.config).to(device)
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = _to(first["inputs"], device)

    def step():
        optim.zero_grad(set_to_none=True)
        model(inputs)["loss"].backward()
        optim.step()

    t_step = _median_time(step, 3, _sync(device))
    step_sps = _batch_len(first) / t_step
    return dict(task=task, batch=batch, workers=workers, data_sps=data_sps, step_sps=step_sps,
                startup_s=t_first - t_start, bound="data" if data_sps < step_sps else "step")


def _batch_len(batch) -> int:
    from engine.throughput import count_samples

    return count_samples(batch)


def _to(x, device):
    if torch.is_tensor(x):
        return x.to(device)
    if isinstance(x, (list, tuple)):
        return type(x)(_to(v, device) for v in x)
    return x


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

    from pipeline.cell import default_cache, make_plan
    from tasks import build_task
    from tasks.data.coco_pipeline import build_coco_dataset, train_pipeline
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


SECTIONS = ("steps", "memory", "pairs", "data", "extraction", "runner")
DEFAULT_SECTIONS = SECTIONS[:-1]  # the Runner section trains for minutes: asked for by name
DATA_TASKS = ("cifar100", "imagenet", "coco", "eeg")


def _ratio(r) -> str:
    return f"x{r['ratio']:.2f} [{r['q1']:.2f}-{r['q3']:.2f}]"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.speed")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=7, help="interleaved rounds per row")
    p.add_argument("--inner", type=int, default=2,
                   help="calls per reading; a reading is the fastest of them")
    p.add_argument("--quick", action="store_true", help="tiny sizes, a smoke test")
    p.add_argument("--methods", nargs="+", default=None,
                   help="methods to time (default: every registered method that pretrains)")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=None,
                   help="sections to run (default: all but runner)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                   help="autocast of the timed steps and the Runner's precision (auto: bf16 on a "
                        "GPU with native bfloat16, fp16 on an older one, fp32 on a CPU)")
    p.add_argument("--runner-steps", type=int, default=None,
                   help="training iterations per method in the runner section (default 300; "
                        "--quick 6)")
    p.add_argument("--runner-workers", type=int, default=None,
                   help="loader workers of the runner section (default min(8, CPUs); --quick 0)")
    p.add_argument("--settings", nargs="+", default=None, metavar="ARCH:IMG:PATCH:BATCH:PAIRS",
                   help="step/memory settings (default vit_small:224:16:8:2048 vit_base:224:16:2:4802)")
    p.add_argument("--pairs", nargs="+", type=int, default=[512, 1024, 2048, 4096, 8192])
    p.add_argument("--pairs-setting", default=None, metavar="ARCH:PATCH:BATCH",
                   help="model of the pairs section (default vit_small:16:2)")
    p.add_argument("--sizes", nargs="+", type=int, default=None, help="image sizes of the pairs section")
    p.add_argument("--tasks", nargs="+", default=list(DATA_TASKS), help="tasks of the data section")
    p.add_argument("--out", default=None, help="Markdown table (default results/speed/<device>.md)")
    p.add_argument("--no-write", action="store_true", help="print only")
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

    methods = args.methods or [n for n, e in METHODS.items() if e.cls.pretrains]
    sections = args.only or DEFAULT_SECTIONS
    from engine.errors import ConfigError

    try:
        precision = resolved_precision(args.precision, args.device)
    except ConfigError as exc:  # fp16 without a GPU, bf16 on a GPU without it
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.settings:
        settings = [(a, int(i), int(pt), int(b), int(pr)) for a, i, pt, b, pr in
                    (x.split(":") for x in args.settings)]
    elif args.quick:
        settings = [("vit_micro", 32, 4, 8, 512)]
    else:
        settings = [("vit_small", 224, 16, 8, 2048), ("vit_base", 224, 16, 2, 4802)]
    pa, pp, pb = ((args.pairs_setting or ("vit_micro:4:4" if args.quick else "vit_small:16:2"))
                  .split(":"))
    sizes = args.sizes or ([32, 64] if args.quick else [112, 224])
    load0 = os.getloadavg()[0]
    lines = []

    def out(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    out(f"# Speed: {device_name(args.device)}")
    out()
    import shlex

    given = sys.argv[1:] if argv is None else list(argv)
    out(f"`{' '.join(['python -m benchmarks.speed', *map(shlex.quote, given)])}`: torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, {args.repeats} interleaved rounds "
        f"per row, each reading the fastest of {args.inner} calls; precision {precision} "
        f"(--precision {args.precision}); load average {load0:.2f} at the start.")
    if "steps" in sections:
        for arch, img, patch, batch, pairs in settings:
            out()
            out(f"## Training step: {arch} at {img}, patch {patch}, batch {batch}, {pairs} pairs")
            out()
            out("Ratio: median of the per-round ratios to the plain step of the same round "
                "[first-third quartile].")
            out()
            out("| method | ms per step | samples/s | vs plain ViT | GFLOPs/step | MFU |")
            out("|---|---:|---:|---:|---:|---:|")
            rows = []
            for r in bench_steps(arch, img, patch, batch, pairs, args.repeats, args.device, methods,
                                 args.inner, precision):
                rows.append(r)
                gf = "-" if r["flops"] is None else f"{r['flops'] / 1e9:.1f}"
                mfu = ("n/a (CPU)" if args.device != "cuda" else
                       "unknown device" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%")
                out(f"| {r['name']} | {r['seconds'] * 1000:.1f} | {r['samples_per_second']:.1f} | "
                    f"{_ratio(r)} | {gf} | {mfu} |")
            out()
            for what, value, ok in identity_checks(rows):
                out(f"- identical computations, {what}: x{value:.3f} "
                    f"({'within' if ok else 'NOT within'} {TOLERANCE:.0%})")
    if "memory" in sections:
        for arch, img, patch, batch, pairs in settings:
            out()
            out(f"## Peak memory of one step: {arch} at {img}, batch {batch}, {pairs} pairs")
            out()
            out("Model, gradients and activations: the peak above what the process held "
                "before the model was built.")
            out()
            out("| method | peak MB | vs plain ViT |")
            out("|---|---:|---:|")
            base = None
            for name, mb in bench_memory(arch, img, patch, batch, pairs, args.device, methods,
                                         precision):
                base = mb if base is None else base
                rel = "-" if mb is None or not base else f"{100 * (mb / base - 1):+.0f}%"
                out(f"| {name} | {'n/a' if mb is None else f'{mb:.0f}'} | {rel} |")
    if "pairs" in sections:
        out()
        out(f"## PART's step by pairs and image size: {pa}, patch {pp}, batch {pb}")
        out()
        out("| image | pairs | ms per step | vs plain ViT |")
        out("|---:|---:|---:|---:|")
        rows = []
        for r in bench_pairs(pa, sizes, int(pp), int(pb), args.pairs, args.repeats, args.device,
                             inner=args.inner, precision=precision):
            rows.append(r)
            out(f"| {r['img']} | {r['pairs']} | {r['seconds'] * 1000:.1f} | {_ratio(r)} |")
        growth = pairs_growth(rows)
        if growth:
            out()
            out("Growth beyond 2048 pairs (linear or better when the step grows by at most the "
                "pair factor): " + "; ".join(
                    f"{img} px, {p} pairs: step x{g:.2f} for pairs x{f:.0f} "
                    f"({'ok' if g <= f else 'SUPERLINEAR'})" for img, p, g, f in growth))
    if "data" in sections:
        out()
        out(f"## Data pipeline vs training step (preset {args.preset}, PART pretraining)")
        out()
        out("Pipeline: a DataLoader over the task's pretraining data with the preset's workers "
            "and batch (decode + augment + sampling; start-up and first batch apart). Step: "
            "forward, backward and AdamW at that batch.")
        out()
        out("| task | batch | workers | pipeline samples/s | step samples/s | pipeline / step "
            "| first batch s | bounds the run |")
        out("|---|---:|---:|---:|---:|---:|---:|---|")
        for task in args.tasks:
            try:
                d = bench_data(task, args.preset, args.device)
            except Exception as exc:  # noqa: BLE001 - one task's failure is a table row
                out(f"| {task} | - | - | - | - | - | - | failed: {type(exc).__name__}: {exc} |")
                continue
            out(f"| {task} | {d['batch']} | {d['workers']} | {d['data_sps']:.0f} | "
                f"{d['step_sps']:.0f} | x{d['data_sps'] / d['step_sps']:.1f} | "
                f"{d['startup_s']:.2f} | {d['bound']} |")
    if "extraction" in sections:
        img, patch = (32, 4) if args.quick else (224, 16)
        t_b, t_l = bench_extraction(8, img, patch, (img // patch) ** 2, args.repeats, args.device)
        out()
        out(f"## Patch extraction, batch 8, {(img // patch) ** 2} patches of {patch}x{patch} at {img}")
        out()
        out(f"batched {t_b * 1000:.2f} ms, per-patch loop {t_l * 1000:.1f} ms: "
            f"batched is {t_l / t_b:.0f}x faster")
    if "runner" in sections:
        os.environ.setdefault("PART_BENCH_LOG_LEVEL", "WARNING")  # the table, not the Runner's log
        arch, img, patch, batch, pairs = settings[-1]
        steps = args.runner_steps or (6 if args.quick else 300)
        workers = args.runner_workers if args.runner_workers is not None else (
            0 if args.quick else min(8, os.cpu_count() or 1))
        out()
        out(f"## Through the Runner: {arch} at {img}, patch {patch}, batch {batch}, {pairs} pairs, "
            f"{steps} iterations, precision {precision}, {workers} loader workers")
        out()
        out("The suite's Runner as a run builds it (its optimizer wrapper for the precision, "
            "pinned-memory loaders on a GPU, hooks reading the device at log intervals only), on "
            "synthetic images in host memory; the first iteration is not timed, and on a GPU one "
            "more is counted by the FLOP counter and not timed (engine.throughput).")
        out()
        out("| method | images/s | ms per iteration | peak MB | MFU | wall s (with set-up) |")
        out("|---|---:|---:|---:|---:|---:|")
        for r in bench_runner(arch, img, patch, batch, pairs, steps, args.device, methods,
                              precision, workers):
            sps, spi = r.get("samples_per_second"), r.get("seconds_per_iter")
            mfu = ("n/a (CPU)" if args.device != "cuda" else
                   r.get("mfu_note") or "-" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%")
            out(f"| {r['name']} | {'-' if sps is None else f'{sps:.1f}'} | "
                f"{'-' if spi is None else f'{spi * 1000:.1f}'} | {r.get('peak_memory_mb') or 0:.0f} | "
                f"{mfu} | {r['wall_s']:.1f} |")
    out()
    out(f"Load average {os.getloadavg()[0]:.2f} at the end.")
    if not args.no_write:
        path = Path(args.out) if args.out else REPO / "results" / "speed" / f"{device_slug(args.device)}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        print(f"\nwritten: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
