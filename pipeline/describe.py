"""What a cell would do, without doing it: ``--dry-run`` and ``--explain``.

:func:`describe_plan` is every value of a resolved plan with the layer it came from,
batches, the lr after its rule, iterations per epoch and in total (counted in a data
root, else the data set's published size), the checkpoint key and whether it is cached,
the record path and the missing data; :func:`explain` is the command (and commit) that
reproduces a record, checked by resolving its plan again.
"""
from __future__ import annotations

import json
from pathlib import Path

from engine.errors import ConfigError, PartBenchError
from engine.plan import iters_per_epoch, plan_to_dict, stable_hash, with_step_floor
from engine.records import record_path
from tasks import TASKS, build_task

from .cell import data_identities, default_cache, make_plan, work_dir_of

__all__ = ["describe_plan", "dry_run", "explain", "runtime_here"]


def explain(record_file) -> str:
    """The command (and commit) that reproduces a record, checked by resolving its plan."""
    import shlex

    try:
        rec = json.loads(Path(record_file).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read record {record_file}: {exc}") from exc
    inv = rec.get("invocation")
    if not inv:
        raise ConfigError(f"record {record_file} has no invocation (written by an older version)")
    options = dict(inv.get("cfg_options") or {})
    for key, value in (inv.get("row") or {}).items():  # a table row's overrides
        section, _, rest = key.partition(".")
        options[f"methods.{inv['method']}.{rest}" if section == "method"
                else f"tasks.{inv['task']}.{key}"] = value
    cmd = ["python", "-m", "benchmarks.run", "--method", inv["method"], "--task", inv["task"],
           "--preset", inv["preset"], "--seed", str(inv["seed"])]
    if inv.get("data_root"):
        cmd += ["--data-root", str(inv["data_root"])]
    if options:
        cmd += ["--cfg-options", *(f"{k}={_cli_value(v)}" for k, v in options.items())]
    git = rec.get("git") or {}
    lines = [f"# record {record_file}: status {rec.get('status', 'ok')}, plan {rec.get('plan_hash')}"]
    if git.get("commit"):
        dirty = (f" (the tree was dirty: diff sha1 {git.get('diff_sha1')}; those changes are not "
                 f"in the commit)" if git.get("dirty") else "")
        lines.append(f"git checkout {git['commit']}{dirty}")
    lines.append(" ".join(shlex.quote(c) for c in cmd))
    try:
        plan = make_plan(inv["method"], inv["task"], preset=inv["preset"], seed=inv["seed"],
                         data_root=inv.get("data_root"), cfg_options=options)
        same = stable_hash(plan_to_dict(plan)) == rec.get("plan_hash")
        lines.append("# this command resolves to the record's plan" if same else
                     "# warning: at this commit the command resolves to another plan than the record's")
    except Exception as exc:  # noqa: BLE001 - an explanation still prints the command
        lines.append(f"# warning: the command does not resolve at this commit: {exc}")
    return "\n".join(lines)


def _cli_value(v) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_cli_value(x) for x in v) + "]"
    return str(v)


def runtime_here(loader) -> dict:
    """How the loader section's precision and compile switches resolve on this machine
    (a plan made on a login node says what a GPU node would do in ``format_plan``)."""
    from engine.precision import DeviceCaps, resolve_precision

    caps = DeviceCaps.probe()
    try:
        resolved = resolve_precision(loader.precision, caps)
    except ConfigError as exc:
        resolved = f"refused here: {exc}"
    return dict(device=caps.name, precision=loader.precision, precision_here=resolved,
                pin_memory=caps.cuda, compile=loader.compile)


def describe_plan(plan, cache_root: Path, out=None) -> dict:
    """Everything ``--dry-run`` shows, as one dict (``--json`` prints it as is)."""
    from engine.pretrain import is_pretrained, pretrained_folder

    info = plan_to_dict(plan)
    info["sources"] = plan.sources
    missing = []
    sources = [("data", plan.data)]
    if plan.pretrain_data is not plan.data:  # detection pretrains on other images
        sources.append(("pretrain_data", plan.pretrain_data))
    for name, d in sources:
        if d.missing:
            missing.append(f"{name}: no root for {d.dataset} (and no embedded data in preset "
                           f"{plan.preset})" + (": pass --data-root" if name == "data" else
                                                f": set tasks.{plan.task}.pretrain_data.root"))
        elif d.root and not Path(d.root).exists():
            missing.append(f"{name}: {d.root} does not exist")
    sizes = {"pretrain": None, "finetune": None}
    if not missing:
        try:
            sizes = build_task(plan, cache_root).train_sizes()
        except PartBenchError as exc:
            missing.append(str(exc))
    info["missing_data"] = missing

    iterations = {}
    published = TASKS[plan.task].published_sizes(plan)
    phases = (("pretrain", plan.pretrain, plan.pretrain_data), ("finetune", plan.finetune, plan.data))
    for phase, sched, data in phases:
        if sched is None:
            continue
        if data.root:
            n, how = sizes.get(phase), "counted"
        else:  # the generator's train split (a COCO one includes its images without objects)
            n = (data.embedded or {}).get("num_train")
            n, how = (int(n), "embedded") if n else (None, "")
        if n is None:
            n, how = published.get(phase) or (None, "")
        if n is None:
            continue
        per = sched.batch_per_process(plan.world_size)
        ipe = iters_per_epoch(n, per, plan.world_size, n >= per, sched.repeated_aug)
        epochs = with_step_floor(sched, plan.sources, phase).epochs_for(ipe)  # min_steps
        iterations[phase] = dict(num_images=n, count=how, per_epoch=ipe, epochs=epochs,
                                 total=ipe * epochs,
                                 optimizer_steps=ipe * epochs // sched.grad_accum)
    info["iterations"] = iterations

    data = data_identities(plan)
    if plan.pretrain is not None and data["pretrain"] is not None:
        folder = pretrained_folder(plan, data["pretrain"], cache_root)
        info["checkpoint"] = dict(key=folder.name, cached=is_pretrained(folder), path=str(folder))
    else:
        info["checkpoint"] = dict(key=None, cached=False, path=None)
    info["runtime"] = runtime_here(plan.loader)
    rec = record_path(out, plan)
    info["record"] = dict(path=str(rec), exists=rec.exists())
    info["work_dir"] = str(work_dir_of(plan, rec, data, cache_root))
    return info


def dry_run(method: str, task: str, *, preset: str = "tiny", seed: int = 0, data_root=None,
            out=None, cache=None, cfg_options=None, row=None, world_size=None) -> dict:
    plan = make_plan(method, task, preset=preset, seed=seed, data_root=data_root,
                     cfg_options=cfg_options, row=row, world_size=world_size)
    return describe_plan(plan, Path(cache) if cache else default_cache(), out)
