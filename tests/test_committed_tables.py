"""The tables committed under results/tiny/ are today's: every measured cell names the
plan of the record it shows, and that plan is what today's code resolves for the cell.
A change that alters a plan (a recipe, a preset value, a method's version) without
regenerating the tables fails here, naming the table and the command that renews it."""
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.tables import TABLES, CellPlans, cell_tasks

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "results" / "tiny"


def committed_tables():
    from benchmarks.rank import rank_table

    tables = dict(TABLES, rank=rank_table("cifar100"))
    return [(name, tables[name]) for name in sorted(tables) if (TINY / f"{name}.csv").exists()]


def test_every_tiny_table_is_committed():
    names = {name for name, _ in committed_tables()}
    assert names == set(TABLES) | {"rank"}, sorted(set(TABLES) | {"rank"} - names)


@pytest.mark.parametrize("name,table", committed_tables(), ids=lambda v: v if isinstance(v, str) else "")
def test_committed_table_shows_todays_plans(name, table):
    df = pd.read_csv(TINY / f"{name}.csv", dtype=str, keep_default_na=False).set_index("row")
    plans = CellPlans("tiny", TINY / "runs")
    renew = f"rerun `make {name}` (or `make results`) and commit results/tiny/{name}.*"
    tasks = {task for task, _ in cell_tasks(table)}
    checked = 0
    for row in table.rows_for("tiny"):
        if row.method is None:
            continue
        for col in table.columns:
            if col.from_plan or col.task not in tasks:
                continue
            protocol = col.protocol if col.overrides() else None
            where = f"results/tiny/{name}.csv, row {row.label!r}, column {col.label!r}"
            assert f"{col.label} (ours, plan)" in df.columns, \
                f"{where}: the table names no plans (written by older code): {renew}"
            status = df.loc[row.label, f"{col.label} (ours, status)"]
            assert status == "ok", f"{where}: cell is {status}: {renew}"
            shown = dict(token.split(":", 1) for token in df.loc[row.label, f"{col.label} (ours, plan)"].split())
            assert shown, f"{where}: no plan for the number shown: {renew}"
            for seed, plan_hash in shown.items():
                today = plans.get(row, col.task, protocol, int(seed.lstrip("s")))[2]
                assert plan_hash == today, (
                    f"{where}, seed {seed.lstrip('s')}: the number shown is of plan {plan_hash}, "
                    f"today's code resolves {today}: {renew}")
                checked += 1
            # the value shown came from a commit that is named
            assert df.loc[row.label, f"{col.label} (ours, commit)"], f"{where}: no commit named"
    assert checked, f"{name}: no measured cell to check"
