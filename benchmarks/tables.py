"""The paper's tables and figures as data, and the command that fills them.

    python -m benchmarks.tables table5 [--preset tiny] [--seeds 1] [--no-run]

A table is rows (a method, plus config overrides that make the row's variant) times
columns (a task and the metric it reports). Each (row, column, seed) cell is one run
record written by :func:`benchmarks.run.run_cell`; the command runs the cells that
have no record yet (a pretrained checkpoint is shared by every task of a row), then
renders ``results/<preset>/<table>.{csv,md}`` with mean ± std over seeds and the
paper's numbers (``paper_numbers/<table>.csv``) in their own columns.

With more than one seed a cell shows ``mean ± std [95% t-interval of the mean]``
(:func:`benchmarks.stats.format_mean_ci`; std with ddof = 1). A table with a
``reference`` row marks a row's cell with ``*`` only when the paired difference to the
reference over the seeds both rows have (:func:`benchmarks.stats.paired_difference`)
has a 95% interval that excludes 0; the differences are listed under the table. A
column may name a ``protocol`` (``knn``, ``linear``; default: the task's, finetuning):
its cells are runs with ``protocol.name`` set, records apart from the finetuning cells.
A cell whose record carries a warning for the column (a training loss at the class
prior, an accuracy within noise of the majority class; see ``tasks/protocols.py``) is
marked ``⚠`` and its warnings are listed under the table.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "paper_numbers"  # the paper's numbers: read, never written


@dataclass(frozen=True)
class Row:
    label: str                      # as in the paper (and in paper_numbers/<table>.csv)
    method: str | None              # registered method; None = the paper's row only
    # plan overrides of the row (the "row" layer of engine/plan.py), dotted:
    # "method.num_pairs", "pretrain.epochs"; preset_overrides adds some for one preset
    overrides: dict = field(default_factory=dict)
    preset_overrides: dict = field(default_factory=dict)
    status: str = "not implemented"  # shown in the measured cells of a paper-only row
    presets: tuple | None = None    # the presets that have this row (None: all)
    skip_presets: tuple = ()
    paper_label: str | None = None  # its row in paper_numbers/<table>.csv (default: label)

    def plan_overrides(self, preset: str) -> dict:
        return {**self.overrides, **self.preset_overrides.get(preset, {})}

    def in_preset(self, preset: str) -> bool:
        return preset not in self.skip_presets and (self.presets is None or preset in self.presets)


@dataclass(frozen=True)
class Column:
    label: str
    task: str
    metric: str                     # a metric of the record, or with from_plan a dotted plan key
    paper: str                      # column name in paper_numbers/<table>.csv
    from_plan: bool = False         # e.g. "pretrain.epochs": the cell's plan value (None -> 0)
    digits: int = 2                 # decimals shown in the Markdown
    protocol: str | None = None     # knn | linear: the task's evaluation protocol (None: finetune)

    def overrides(self) -> dict:
        """The plan values this column's runs add to the row's ("protocol.name")."""
        if self.protocol in (None, "finetune"):
            return {}
        return {"protocol.name": self.protocol}

    def warnings(self, record: dict) -> list[str]:
        """The record's warnings that concern this column: those about its metric
        (``"<metric>: ..."``), about training (``"training: ..."``) and about the
        pretrained features (``"pretraining: ..."``, :mod:`engine.health`)."""
        if self.from_plan:
            return []
        return [w for w in record.get("warnings") or ()
                if w.startswith((f"{self.metric}:", "training:", "pretraining:"))]

    def value(self, record: dict):
        """The measured value of a record (a metric; ``from_plan`` columns use
        :meth:`plan_value` instead)."""
        return record["metrics"].get(self.metric)

    def plan_value(self, plan) -> str:
        """A ``from_plan`` column's text from a cell's resolved plan (a ``RunPlan``):
        ``yes``/``no`` for a switch, an epoch count with the step floor that can raise it
        on small data (``6, >= 500 steps``), 0 for a phase the method does not have."""
        from engine.plan import plan_to_dict, with_step_floor

        node = plan_to_dict(plan)
        parts = self.metric.split(".")
        for part in parts:
            if node is None:
                return "0"  # no such phase (a method without pretraining)
            node = node.get(part)
        if isinstance(node, bool):
            return "yes" if node else "no"
        schedule = getattr(plan, parts[0], None)
        if parts[-1] == "epochs" and schedule is not None:
            floor = getattr(with_step_floor(schedule, plan.sources, parts[0]), "min_steps", None)
            if floor:
                return f"{node}, >= {floor} steps"
        return str(node)


@dataclass(frozen=True)
class Table:
    title: str
    rows: tuple
    columns: tuple
    plot: str | None = None         # "pairs": accuracy vs num_pairs line plot
    note: str = ""
    preset_notes: dict = field(default_factory=dict)  # appended for that preset
    reference: str | None = None    # a row label: other rows' paired differences to it

    def rows_for(self, preset: str) -> tuple:
        return tuple(r for r in self.rows if r.in_preset(preset))

    def note_for(self, preset: str) -> str:
        return " ".join(n for n in (self.note, self.preset_notes.get(preset, "")) if n)


def plan_columns(task: str, ft_paper: str) -> tuple:
    """Tables 6 and 7's PE / PT / FT epoch columns, read from each cell's plan
    (``ft_paper``: the paper's finetuning-epoch column, "" where it has none)."""
    return (Column("PE", task, "finetune.pos_embed", "pos_embed", from_plan=True),
            Column("PT epochs", task, "pretrain.epochs", "pt_epochs", from_plan=True),
            Column("FT epochs", task, "finetune.epochs", ft_paper, from_plan=True))


PAIRS = (512, 1024, 2048, 4096)
FIG8_PT_EPOCHS = (400, 1000, 4000)  # the paper's three curves

TABLES: dict[str, Table] = {
    "table5": Table(
        title="Table 5: relative encoders (CIFAR-100)",
        rows=(Row("MLP", "part", {"method.head": "mlp"}),
              Row("Pairwise MLP", "part", {"method.head": "pairwise_mlp"}),
              Row("Cross-attention", "part", {"method.head": "cross_attention"})),
        columns=(Column("err x", "pretext", "err_x", "err_x"),
                 Column("err y", "pretext", "err_y", "err_y"),
                 Column("Euclidean", "pretext", "err_euclid", "err_euclid"),
                 Column("const. Euclidean", "pretext", "const_err_euclid", ""),
                 Column("acc", "cifar100", "acc1", "acc1")),
        note="Errors are in units of the reference patch size on held-out images; "
             "'const. Euclidean' is the error of the best constant prediction (the "
             "geometric median of the true translations), which a model that learned "
             "nothing cannot beat.",
    ),
    "fig8": Table(
        title="Figure 8: CIFAR-100 accuracy vs #pairs",
        # the paper preset has the paper's three curves (400/1000/4000 pretraining
        # epochs); other presets one curve at their own pretraining length
        rows=tuple(Row(f"{p} pairs", "part", {"method.num_pairs": p}, skip_presets=("paper",),
                       paper_label=f"{p} pairs, 1000 PT epochs") for p in PAIRS)
        + tuple(Row(f"{p} pairs, {e} PT epochs", "part",
                    {"method.num_pairs": p, "pretrain.epochs": e}, presets=("paper",))
                for e in FIG8_PT_EPOCHS for p in PAIRS),
        columns=(Column("acc", "cifar100", "acc1", "acc1"),),
        plot="pairs",
        note="The paper shows Figure 8 as curves at 400/1000/4000 pretraining epochs; "
             "only the 2048-pair point at 1000 epochs (83.0) is stated as a number.",
        preset_notes={"tiny": "Tiny preset: one curve at its own 6 pretraining epochs; the "
                              "paper column is the paper's 1000-epoch point."},
    ),
    "table3": Table(
        title="Table 3: EEG sleep staging (PhysioNet 2018, Cohen's kappa)",
        rows=(Row("Supervised w/ Pos Embed", "scratch"), Row("MP3", "mp3"),
              Row("DropPos", "droppos"), Row("MAE", "mae"), Row("PART", "part")),
        columns=(Column("PT epochs", "eeg", "pretrain.epochs", "pt_epochs", from_plan=True,
                        digits=0),
                 Column("FT epochs", "eeg", "finetune.epochs", "ft_epochs", from_plan=True,
                        digits=0),
                 Column("kappa", "eeg", "kappa", "kappa", digits=3),
                 Column("acc", "eeg", "acc", ""),
                 Column("macro-F1", "eeg", "macro_f1", ""),
                 Column("majority acc", "eeg", "majority_acc", "")),
        note="Six EEG channels, 0.1-30 Hz, 100 Hz, 30 s windows; pretraining on the pretrain "
             "subjects (unlabelled records included), finetuning on the finetune subjects with "
             "20 % of the position embeddings masked, kappa over every window of the held-out "
             "test subjects. 'majority acc' is the accuracy of always predicting the test "
             "set's most frequent stage.",
        preset_notes={"tiny": "Tiny preset: 30 generated 1-hour records (24 scored), split 20 / "
                              "4 / 6 subjects, 10 pretraining and 30 finetuning epochs of a "
                              "4-block encoder."},
    ),
    "table4": Table(
        title="Table 4: on-grid vs off-grid sampling (PART-grid vs PART)",
        rows=(Row("PART-grid", "part-grid"), Row("PART", "part")),
        columns=(Column("COCO AP^b", "coco", "bbox_mAP", "coco_bbox_mAP"),
                 Column("CIFAR-100", "cifar100", "acc1", "cifar100_acc1"),
                 Column("IN-1K", "imagenet", "acc1", "imagenet_acc1"),
                 Column("time series kappa", "eeg", "kappa", "eeg_kappa", digits=3)),
        note="The time-series column is EEG sleep staging (Cohen's kappa, Table 3's protocol).",
    ),
    "table1": Table(
        title="Table 1: PART vs PART + aspect ratio + scale",
        rows=(Row("PART", "part"),
              Row("PART + aspect ratio + scale", "part-aspect-scale",
                  preset_overrides={"paper": {"pretrain.epochs": 100}})),
        columns=(Column("COCO AP^b", "coco", "bbox_mAP", "bbox_mAP"),
                 Column("COCO AP^b_50", "coco", "bbox_mAP_50", "bbox_mAP_50"),
                 Column("COCO AP^b_75", "coco", "bbox_mAP_75", "bbox_mAP_75"),
                 Column("IN-1K", "imagenet", "acc1", "imagenet_acc1")),
        note="COCO: Mask R-CNN with a ViTDet backbone, box AP in %; IN-1K: top-1 accuracy.",
        preset_notes={"paper": "The aspect + scale row pretrains 100 epochs, as the paper's; "
                               "PART pretrains 200 (COCO) and 400 (IN-1K) epochs.",
                      "tiny": "Both rows pretrain with the tiny preset's one schedule (the "
                              "paper pretrained the aspect + scale row for 100 epochs)."},
    ),
    "table2": Table(
        title="Table 2: COCO object detection (Mask R-CNN, ViTDet backbone)",
        rows=(Row("MAE", "mae"), Row("MP3", "mp3"), Row("DropPos", "droppos"), Row("PART", "part")),
        columns=(Column("AP^b", "coco", "bbox_mAP", "bbox_mAP"),
                 Column("AP^b_50", "coco", "bbox_mAP_50", "bbox_mAP_50"),
                 Column("AP^b_75", "coco", "bbox_mAP_75", "bbox_mAP_75")),
        note="Box AP in %, MMDetection's CocoMetric (pycocotools). Every row pretrains with the "
             "preset's one schedule and finetunes with its one detection schedule (paper "
             "preset: 200 ImageNet pretraining epochs, ViTDet's recipe at the paper's 1x, 12 "
             "epochs; tiny: 6 and 6 epochs on generated scenes).",
    ),
    "table6": Table(
        title="Table 6: ImageNet-1k classification",
        rows=(Row("Labelled baseline w/ PE", "scratch"),
              Row("Labelled baseline w/o PE", "scratch-nope"),
              Row("MoCo v3", None), Row("DINO", None), Row("BEiT", None), Row("CIM", None),
              Row("MAE (150 ep)", "mae", preset_overrides={
                  "paper": {"pretrain.epochs": 150, "finetune.epochs": 150}}),
              # the longer schedule is its own run on the paper preset; on a preset with
              # one schedule for every row it would repeat the row above
              Row("MAE (1600 ep)", "mae", preset_overrides={
                  "paper": {"pretrain.epochs": 1600, "finetune.epochs": 100}},
                  presets=("paper",)),
              Row("MP3 w/ PE", "mp3"),
              Row("MP3 w/o PE", "mp3-nope", preset_overrides={"paper": {"pretrain.epochs": 100}}),
              Row("DropPos", "droppos", preset_overrides={
                  "paper": {"pretrain.epochs": 200, "finetune.epochs": 100}}),
              Row("PART", "part")),
        columns=(*plan_columns("imagenet", ft_paper="ft_epochs"),
                 Column("acc", "imagenet", "acc1", "acc1")),
        note="PE, PT and FT epochs (ours) are each row's resolved plan: position embeddings "
             "at finetuning, pretraining and finetuning epochs. Every measured row finetunes "
             "with DeiT's supervised recipe (no layer-wise lr decay); w/o PE rows finetune "
             "without position embeddings. PART and MP3 pretrain without position embeddings "
             "and finetune with learnable ones added, as the paper's Section 3 describes (its table "
             "marks PART without: it pretrains without them).",
        preset_notes={"paper": "Each row pretrains and finetunes for the epochs the paper "
                               "states for it.",
                      "tiny": "Tiny preset: one pretraining and finetuning schedule for every "
                              "row; the paper's MAE (1600 ep) row is a paper-preset run only."},
    ),
    "table7": Table(
        title="Table 7: CIFAR-100 classification",
        rows=(Row("Labelled baseline w/ PE", "scratch"),
              Row("Labelled baseline w/o PE", "scratch-nope"),
              Row("MoCo v3", None),
              Row("MAE", "mae", preset_overrides={"paper": {"pretrain.epochs": 2000}}),
              Row("MP3 w/ PE", "mp3", preset_overrides={"paper": {"pretrain.epochs": 2000}}),
              Row("MP3 w/o PE", "mp3-nope", preset_overrides={"paper": {"pretrain.epochs": 2000}}),
              Row("PART", "part")),
        columns=(*plan_columns("cifar100", ft_paper=""),
                 Column("acc", "cifar100", "acc1", "acc1")),
        note="PE, PT and FT epochs (ours) are each row's resolved plan. Every measured row "
             "finetunes with DeiT's supervised recipe (no layer-wise lr decay), the labelled "
             "baselines included; the paper gives 400 finetuning epochs for PART and no "
             "finetuning epochs for the rows it borrows.",
        preset_notes={"paper": "MAE and MP3 pretrain 2000 epochs and PART 1000, as the paper's "
                               "rows (the paper's point: PART at 1000 against MP3 at 2000).",
                      "tiny": "Tiny preset: one pretraining and finetuning schedule for every "
                              "row."},
    ),
}


def available(task: str) -> bool:
    from tasks import TASKS

    return task in TASKS


def cell_tasks(table: Table) -> list[tuple[str, str | None]]:
    """The (task, protocol) runs a row of the table needs, in column order."""
    out = []
    for col in table.columns:
        key = (col.task, col.protocol if col.overrides() else None)
        if key not in out and available(col.task):
            out.append(key)
    return out


def cell_overrides(row: Row, protocol: str | None, preset: str) -> dict:
    return {**row.plan_overrides(preset), **({"protocol.name": protocol} if protocol else {})}


def cell_runs(table: Table, seeds: int, preset: str):
    """(row, task, protocol, seed) of every run the table needs."""
    for row in table.rows_for(preset):
        if row.method is None:
            continue
        for seed in range(seeds):
            for task, protocol in cell_tasks(table):
                yield row, task, protocol, seed


def cell_stats(values: dict, reference: dict | None) -> dict:
    """Summary of one cell: ``values`` {seed: value}; ``reference`` the reference row's
    {seed: value} of the same column (None: no comparison)."""
    import math

    from benchmarks.stats import mean_ci, paired_difference

    out = {"mean": math.nan, "std": math.nan, "ci95": math.nan, "n": len(values),
           "diff": math.nan, "diff_low": math.nan, "diff_high": math.nan, "significant": False}
    if values:
        out["mean"], out["std"], out["ci95"] = mean_ci(list(values.values()))
    if reference is not None:
        shared = sorted(set(values) & set(reference))
        if shared:
            d = paired_difference([values[s] for s in shared], [reference[s] for s in shared])
            out.update(diff=d["mean_diff"], diff_low=d["ci_low"], diff_high=d["ci_high"],
                       significant=d["significant"], n_paired=len(shared))
    return out


@dataclass
class Cell:
    """One (row, column) of a rendered table over its seeds."""
    values: dict = field(default_factory=dict)   # seed -> measured value (current records)
    warned: list = field(default_factory=list)   # "seed s: warning" lines
    plans: list = field(default_factory=list)    # "s<seed>:<plan hash>" of the records shown
    commits: list = field(default_factory=list)  # the code commit of each record shown
    failed: int = 0                              # seeds whose record says "failed"
    stale: int = 0                               # seeds whose record is of another plan
    text: str | None = None                      # a from_plan column's value

    @property
    def status(self) -> str:
        if self.text is not None or self.values:
            return "ok" if not (self.stale or self.failed) else "partial"
        return "stale" if self.stale else "failed" if self.failed else "missing"


class CellPlans:
    """The resolved plan, record path and plan hash of every (row, task, protocol, seed)
    of a table, resolved once (resolving is the slow part of rendering)."""

    def __init__(self, preset: str, runs_dir: Path, data_root=None):
        self.preset, self.runs_dir, self.data_root = preset, runs_dir, data_root
        self._plans: dict = {}

    def get(self, row: Row, task: str, protocol: str | None, seed: int):
        """(plan, record path, plan hash) of one cell run."""
        from pipeline.cell import make_plan
        from engine.plan import plan_to_dict, stable_hash
        from engine.records import record_path

        key = (row.label, task, protocol, seed)
        if key not in self._plans:
            plan = make_plan(row.method, task, preset=self.preset, seed=seed,
                             data_root=self.data_root,
                             row=cell_overrides(row, protocol, self.preset))
            self._plans[key] = (plan, record_path(self.runs_dir, plan),
                                stable_hash(plan_to_dict(plan)))
        return self._plans[key]


def record_state(path: Path, plan_hash: str) -> tuple[str, dict | None]:
    """``("current" | "stale" | "failed" | "missing", record)`` of a cell's record file:
    current when it finished ok under the plan today's code resolves for the cell (the
    plan holds the method's code version); stale when it is of another plan, e.g. a
    record written before a recipe or a method changed."""
    import json

    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return "missing", None
    if rec.get("status", "ok") != "ok":
        return "failed", rec
    if rec.get("plan_hash") != plan_hash:
        return "stale", rec
    return "current", rec


def fill(name: str, preset: str, seeds: int, run: bool, data_root=None, cache=None,
         out_root: Path | None = None, table: Table | None = None) -> Path:
    """Run the cells of a table that have no current record (``run``), then render it.
    A cell shows only records of the plan today's code resolves for it: with ``run``
    False an out-of-date record renders as ``stale``, never as a number."""
    import pandas as pd

    from pipeline.cell import run_cell, run_failures
    from engine.records import results_dir

    table = table or TABLES[name]
    if out_root is None:
        out_root = results_dir(preset, data_root)  # a user's data root's tables sit apart
    out_root = Path(out_root)
    runs_dir = out_root / "runs"
    plans = CellPlans(preset, runs_dir, data_root)

    for row, task, protocol, seed in cell_runs(table, seeds, preset):
        _, path, plan_hash = plans.get(row, task, protocol, seed)
        state, _ = record_state(path, plan_hash)
        if state == "current" or not run:
            continue  # a failed or stale cell is run again
        print(f"[{name}] {row.label} / {task}{f' ({protocol})' if protocol else ''} / seed {seed}"
              + (" (its record is of an older plan)" if state == "stale" else ""), flush=True)
        try:
            run_cell(row.method, task, preset=preset, seed=seed, data_root=data_root, cache=cache,
                     out=runs_dir, row=cell_overrides(row, protocol, preset))
        except run_failures() as exc:  # recorded as failed; the other cells still run
            print(f"[{name}] failed: {' '.join(str(exc).split())}", flush=True)

    # read as text: the paper's numbers keep the precision they were printed with
    paper_csv = PAPER / f"{name}.csv"
    paper = pd.read_csv(paper_csv, dtype=str).set_index("row") if paper_csv.exists() else None

    def cell(row: Row, col: Column) -> Cell:
        out = Cell()
        if row.method is None or not available(col.task):
            return out
        protocol = col.protocol if col.overrides() else None
        if col.from_plan:  # the plan's value: the same for every seed
            out.text = col.plan_value(plans.get(row, col.task, protocol, 0)[0])
            return out
        for seed in range(seeds):
            _, path, plan_hash = plans.get(row, col.task, protocol, seed)
            state, rec = record_state(path, plan_hash)
            if state == "failed":
                out.failed += 1
            elif state == "stale":
                out.stale += 1
            if state != "current":
                continue
            value = col.value(rec)
            if value is not None:
                out.values[seed] = float(value)
                out.warned += [f"seed {seed}: {w}" for w in col.warnings(rec)]
                out.plans.append(f"s{seed}:{plan_hash}")
                out.commits.append(((rec.get("git") or {}).get("commit") or "unknown")[:10]
                                   + ("+dirty" if (rec.get("git") or {}).get("dirty") else ""))
        return out

    rows = table.rows_for(preset)
    cells = {(row.label, col.label): cell(row, col) for row in rows for col in table.columns}
    ref_row = next((r for r in rows if r.label == table.reference), None)
    lines = []
    for row in rows:
        entry = {"row": row.label}
        paper_label = row.paper_label or row.label
        for col in table.columns:
            c = cells[(row.label, col.label)]
            if col.from_plan:
                entry[f"{col.label} (ours)"] = c.text
            else:
                ref = (cells[(ref_row.label, col.label)].values
                       if ref_row is not None and row is not ref_row else None)
                st = cell_stats(c.values, ref)
                entry[f"{col.label} (ours)"] = st["mean"]
                entry[f"{col.label} (ours, std)"] = st["std"]
                entry[f"{col.label} (ours, n)"] = st["n"]
                entry[f"{col.label} (ours, ci95)"] = st["ci95"]
                if ref_row is not None:
                    entry[f"{col.label} (ours, diff to reference)"] = st["diff"]
                    entry[f"{col.label} (ours, diff ci low)"] = st["diff_low"]
                    entry[f"{col.label} (ours, diff ci high)"] = st["diff_high"]
                    entry[f"{col.label} (ours, significant)"] = st["significant"]
                entry[f"{col.label} (ours, warnings)"] = " | ".join(c.warned)
                entry[f"{col.label} (ours, failed)"] = c.failed
                entry[f"{col.label} (ours, stale)"] = c.stale
                entry[f"{col.label} (ours, status)"] = c.status
                entry[f"{col.label} (ours, plan)"] = " ".join(c.plans)
                entry[f"{col.label} (ours, commit)"] = " ".join(dict.fromkeys(c.commits))
            if col.paper:
                has = paper is not None and paper_label in paper.index and col.paper in paper.columns
                value = paper.loc[paper_label, col.paper] if has else None
                entry[f"{col.label} (paper)"] = value if isinstance(value, str) else float("nan")
        if row.method is None:
            entry["status"] = row.status
        lines.append(entry)
    df = pd.DataFrame(lines)
    out_root.mkdir(parents=True, exist_ok=True)
    csv_path = out_root / f"{name}.csv"
    if csv_path.resolve().parent == PAPER.resolve():
        raise RuntimeError(f"refusing to write {csv_path}: {PAPER} holds the paper's numbers")
    df.to_csv(csv_path, index=False)
    (out_root / f"{name}.md").write_text(render_markdown(table, df, preset, seeds))
    if table.plot == "pairs":
        plot_pairs(df, out_root / f"{name}.png", preset)
    print(render_markdown(table, df, preset, seeds))
    return csv_path


def dry_run_table(name: str, preset: str, seeds: int, data_root=None, cache=None,
                  world_size=None, table: Table | None = None) -> None:
    """Print the plan of every cell of a table (``make tableN DRY_RUN=1``)."""
    from pipeline.describe import dry_run
    from engine.plan import format_plan
    from engine.records import results_dir

    table = TABLES[name] if table is None else table
    for row, task, protocol, seed in cell_runs(table, seeds, preset):
        print(f"\n[{name}] {row.label} / {task}{f' ({protocol})' if protocol else ''} / seed {seed}")
        print(format_plan(dry_run(row.method, task, preset=preset, seed=seed, data_root=data_root,
                                  cache=cache, row=cell_overrides(row, protocol, preset),
                                  world_size=world_size,
                                  out=results_dir(preset) / "runs")))


def _fmt(mean, std, n, digits: int = 2, ci95=float("nan")):
    """``mean`` (one seed), else ``mean ± std [low, high]`` as
    :func:`benchmarks.stats.format_mean_ci` writes it (``mean ± std`` without a half width)."""
    import math

    if n == 0 or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    if n == 1:
        return f"{mean:.{digits}f}"
    text = f"{mean:.{digits}f} ± {std:.{digits}f}"
    if not (isinstance(ci95, float) and math.isnan(ci95)):
        text += f" [{mean - ci95:.{digits}f}, {mean + ci95:.{digits}f}]"
    return text


def _get(r, key, default=float("nan")):
    return r[key] if key in r.index else default


def render_markdown(table: Table, df, preset: str, seeds: int) -> str:
    import math

    header = ["row"]
    for col in table.columns:
        header.append(f"{col.label} (ours)")
        if col.paper:
            header.append(f"{col.label} (paper)")
    spread = ("mean ± std [95% t-interval of the mean] over seeds" if seeds > 1 else
              "one seed")
    out = [f"# {table.title}", "",
           f"Measured: preset `{preset}`, {seeds} seed(s), {spread}."
           + (" Paper: the numbers the paper reports." if any(c.paper for c in table.columns)
              else ""), "",
           "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    warned, diffs = [], []
    for _, r in df.iterrows():
        cells = [r["row"]]
        for col in table.columns:
            if isinstance(r.get("status"), str):  # a row of the paper's only
                cells.append("—" if col.from_plan else r["status"])
            elif col.from_plan:
                v = r[f"{col.label} (ours)"]
                cells.append("—" if isinstance(v, float) and math.isnan(v) else str(v))
            else:
                text = _fmt(r[f"{col.label} (ours)"], _get(r, f"{col.label} (ours, std)"),
                            int(r[f"{col.label} (ours, n)"]), col.digits,
                            _get(r, f"{col.label} (ours, ci95)"))
                n_failed = int(_get(r, f"{col.label} (ours, failed)", 0) or 0)
                n_stale = int(_get(r, f"{col.label} (ours, stale)", 0) or 0)
                if n_stale:  # a record of another plan is never shown as a number
                    text = "stale" if text == "—" else f"{text} ({n_stale} stale)"
                if n_failed:
                    text = "failed" if text == "—" else f"{text} ({n_failed} failed)"
                if bool(_get(r, f"{col.label} (ours, significant)", False)):
                    text += " *"
                low = _get(r, f"{col.label} (ours, diff ci low)")
                if not (isinstance(low, float) and math.isnan(low)):
                    diffs.append(f"{r['row']}, {col.label}: "
                                 f"{r[f'{col.label} (ours, diff to reference)']:+.{col.digits}f} "
                                 f"[{low:+.{col.digits}f}, "
                                 f"{r[f'{col.label} (ours, diff ci high)']:+.{col.digits}f}]")
                w = _get(r, f"{col.label} (ours, warnings)", "")
                if isinstance(w, str) and w:
                    text += " ⚠"
                    warned += [f"- ⚠ {r['row']}, {col.label}, {line}" for line in w.split(" | ")]
                cells.append(text)
            if col.paper:
                p = r[f"{col.label} (paper)"]
                cells.append("—" if isinstance(p, float) and math.isnan(p) else f"{p}")
        out.append("| " + " | ".join(str(c) for c in cells) + " |")
    if diffs:
        out += ["", f"\\* : the paired difference to the reference row ({table.reference}) over the "
                    f"seeds both rows have has a 95% t-interval that excludes 0. Differences "
                    f"(row - reference) [95% interval]: " + "; ".join(diffs) + "."]
    if warned:
        out += ["", "⚠ : a run of this cell warned that its number may not mean anything:", *warned]
    note = table.note_for(preset)
    if note:
        out += ["", note]
    return "\n".join(out) + "\n"


def plot_pairs(df, path: Path, preset: str) -> None:
    import matplotlib
    import pandas as pd

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # one curve per pretraining length ("2048 pairs, 400 PT epochs"), or one for the preset
    curves: dict[str, list] = {}
    for i, label in enumerate(df["row"]):
        pairs_part, _, epochs_part = label.partition(", ")
        curves.setdefault(epochs_part or f"{preset} preset", []).append((int(pairs_part.split()[0]), i))
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for name, points in curves.items():
        xs, idx = [p for p, _ in points], [i for _, i in points]
        ax.errorbar(xs, df["acc (ours)"].iloc[idx], yerr=df["acc (ours, std)"].iloc[idx].fillna(0),
                    marker="o", capsize=3, label=f"ours, {name}")
    pairs = sorted({p for pts in curves.values() for p, _ in pts})
    paper = pd.to_numeric(df["acc (paper)"], errors="coerce")
    if paper.notna().any():
        xs = [int(df["row"].iloc[i].split()[0]) for i in range(len(df)) if paper.iloc[i] == paper.iloc[i]]
        ax.scatter(xs, paper.dropna(), marker="*",
                   s=80, color="C3", label="paper (real CIFAR-100, 1000 PT epochs)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(pairs, [str(p) for p in pairs])
    ax.set_xlabel("#pairs")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.legend(fontsize=8)
    ax.set_title(f"#pairs ablation, {preset} preset", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tables")
    p.add_argument("table", help=", ".join(TABLES))
    p.add_argument("--preset", default="tiny")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 (mean ± std)")
    p.add_argument("--no-run", action="store_true", help="only render from existing records")
    p.add_argument("--data-root", default=None)
    p.add_argument("--cache", default=None)
    p.add_argument("--dry-run", action="store_true", help="print every cell's plan, run nothing")
    p.add_argument("--world-size", type=int, default=None, help="with --dry-run")
    p.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    p.add_argument("--verbose", action="store_true", help="mmengine's whole set-up output")
    args = p.parse_args(argv)
    if args.verbose:
        os.environ["PART_BENCH_VERBOSE"] = "1"  # read by engine.resume.SuiteRunner
    from engine.cli import run_command

    if args.table not in TABLES:
        print(f"error: unknown table {args.table!r}; expected one of: {', '.join(TABLES)}",
              file=sys.stderr)
        return 2

    def body():
        if args.dry_run:
            dry_run_table(args.table, args.preset, args.seeds, args.data_root, args.cache,
                          args.world_size)
        else:
            fill(args.table, args.preset, args.seeds, not args.no_run, args.data_root, args.cache)

    return run_command(body, args.debug)


if __name__ == "__main__":
    sys.exit(main())
