"""Tables are built from run records: means, stds, paper columns, missing cells."""
import json

import pandas as pd
import pytest

from pipeline.cell import make_plan
from benchmarks.tables import PAPER, TABLES, fill
from engine.plan import plan_to_dict, stable_hash
from engine.records import results_dir
from table_records import write_cell_record


def _write(runs, method, task, seed, metrics, overrides=None, plan_hash=None):
    row = {f"method.{k}": v for k, v in (overrides or {}).items()}
    return write_cell_record(runs, method, task, seed, metrics, row=row, plan_hash=plan_hash)


def test_table5_aggregates_seeds_and_places_the_paper_beside(tmp_path):
    runs = tmp_path / "runs"
    for seed, acc in ((0, 80.0), (1, 84.0)):
        _write(runs, "part", "cifar100", seed, {"acc1": acc}, {"head": "mlp"})
        _write(runs, "part", "pretext", seed,
               {"err_x": 1.0 + seed, "err_y": 0.5, "err_euclid": 0.9, "const_err_euclid": 3.6},
               {"head": "mlp"})
    _write(runs, "part", "cifar100", 0, {"acc1": 70.0})  # cross-attention = preset default
    fill("table5", "tiny", seeds=2, run=False, out_root=tmp_path)
    df = pd.read_csv(tmp_path / "table5.csv").set_index("row")
    assert df.loc["MLP", "acc (ours)"] == pytest.approx(82.0)
    assert df.loc["MLP", "acc (ours, std)"] == pytest.approx(2.0 * 2 ** 0.5)  # ddof = 1
    assert df.loc["MLP", "err x (ours)"] == pytest.approx(1.5)
    assert df.loc["MLP", "err x (paper)"] == pytest.approx(3.18)
    assert df.loc["Cross-attention", "acc (ours, n)"] == 1
    assert df.loc["Pairwise MLP", "acc (ours, n)"] == 0
    md = (tmp_path / "table5.md").read_text()
    # mean ± std [95% t-interval]: 1.5 ± 12.706 x 0.7071 / sqrt(2)
    assert "| MLP | 1.50 ± 0.71 [-4.85, 7.85] | 3.18 |" in md
    assert "| Pairwise MLP | — | 2.84 |" in md
    assert "83.00" in md  # the paper's number as printed
    assert "Paper: the numbers the paper reports." in md


def test_a_table_without_paper_columns_does_not_speak_of_them(tmp_path):
    from benchmarks.rank import rank_table

    fill("rank", "tiny", seeds=1, run=False, out_root=tmp_path, table=rank_table("cifar100"))
    md = next(tmp_path.glob("rank*.md")).read_text()
    assert "(paper)" not in md and "Paper:" not in md


def test_paper_only_rows_and_future_tasks(tmp_path):
    fill("table6", "tiny", seeds=1, run=False, out_root=tmp_path)
    md = (tmp_path / "table6.md").read_text()
    assert "| MoCo v3 | — | yes | — | 300 | — | 150 | not implemented | 83.2 |" in md
    fill("table4", "tiny", seeds=1, run=False, out_root=tmp_path)
    df = pd.read_csv(tmp_path / "table4.csv").set_index("row")
    assert df.loc["PART", "COCO AP^b (paper)"] == pytest.approx(42.4)
    assert df.loc["PART", "COCO AP^b (ours, n)"] == 0


def test_every_table_names_registered_methods_and_paper_rows():
    from methods import METHODS

    for name, table in TABLES.items():
        paper = pd.read_csv(f"paper_numbers/{name}.csv", dtype=str).set_index("row")
        for row in table.rows:
            assert row.method is None or row.method in METHODS, (name, row)
            if name != "fig8":
                assert row.label in paper.index, (name, row.label)


def test_fig8_writes_a_plot(tmp_path):
    runs = tmp_path / "runs"
    for p, acc in ((512, 60.0), (1024, 62.0), (2048, 65.0), (4096, 63.0)):
        _write(runs, "part", "cifar100", 0, {"acc1": acc}, {"num_pairs": p})
    fill("fig8", "tiny", seeds=1, run=False, out_root=tmp_path)
    assert (tmp_path / "fig8.png").stat().st_size > 1000
    df = pd.read_csv(tmp_path / "fig8.csv")
    assert list(df["acc (ours)"]) == [60.0, 62.0, 65.0, 63.0]
    assert json.loads(next(runs.glob("part__cifar100*")).read_text())["metrics"]["acc1"] == 65.0


def test_a_record_of_another_plan_is_stale_never_a_number(tmp_path):
    runs = tmp_path / "runs"
    _write(runs, "part", "cifar100", 0, {"acc1": 70.0})               # today's plan
    _write(runs, "mae", "cifar100", 0, {"acc1": 99.9}, plan_hash="0ld0ld0ld0")  # an older one
    fill("table7", "tiny", seeds=1, run=False, out_root=tmp_path)
    df = pd.read_csv(tmp_path / "table7.csv").set_index("row")
    assert df.loc["PART", "acc (ours)"] == pytest.approx(70.0)
    assert df.loc["PART", "acc (ours, status)"] == "ok"
    part_plan = make_plan("part", "cifar100", preset="tiny", seed=0)
    assert df.loc["PART", "acc (ours, plan)"] == f"s0:{stable_hash(plan_to_dict(part_plan))}"
    assert df.loc["PART", "acc (ours, commit)"] == "abcdef0123"
    assert df.loc["MAE", "acc (ours, status)"] == "stale"
    assert df.loc["MAE", "acc (ours, stale)"] == 1
    assert pd.isna(df.loc["MAE", "acc (ours)"])
    md = (tmp_path / "table7.md").read_text()
    assert "99.9" not in md
    mae_line = next(line for line in md.splitlines() if line.startswith("| MAE |"))
    assert "| stale |" in mae_line
    assert df.loc["MP3 w/ PE", "acc (ours, status)"] == "missing"


def test_the_method_version_is_part_of_the_plan(monkeypatch):
    """A change of what a method computes (its ``version``) makes its records stale."""
    from methods import method_entry

    before = stable_hash(plan_to_dict(make_plan("part", "cifar100")))
    monkeypatch.setattr(method_entry("part").cls, "version", 99)
    plan = make_plan("part", "cifar100")
    assert plan.method.version == 99
    assert stable_hash(plan_to_dict(plan)) != before


def test_rendering_the_paper_preset_twice_keeps_the_papers_numbers(tmp_path):
    before = {p.name: p.read_bytes() for p in PAPER.glob("*.csv")}
    for preset in ("tiny", "paper"):
        assert results_dir(preset).resolve() != PAPER.resolve()
        assert PAPER.resolve() not in results_dir(preset).resolve().parents
    for _ in range(2):
        fill("table2", "paper", seeds=1, run=False, out_root=tmp_path)
    df = pd.read_csv(tmp_path / "table2.csv").set_index("row")
    assert df.loc["PART", "AP^b (paper)"] == pytest.approx(42.4)
    assert {p.name: p.read_bytes() for p in PAPER.glob("*.csv")} == before


@pytest.mark.parametrize("name", ["table6", "table7", "table3"])
def test_paper_preset_rows_run_the_papers_schedules(name, tmp_path):
    """Each measured row's resolved epochs (and position embeddings) are the paper's
    columns for that row, read from the paper's CSV."""
    fill(name, "paper", seeds=1, run=False, out_root=tmp_path)
    ours = pd.read_csv(tmp_path / f"{name}.csv", dtype=str).set_index("row")
    paper = pd.read_csv(PAPER / f"{name}.csv", dtype=str).set_index("row")
    checked = 0
    for row in TABLES[name].rows_for("paper"):
        if row.method is None:
            continue
        for col in TABLES[name].columns:
            if col.from_plan and col.paper:
                if col.label == "PE" and row.method == "part":
                    # the paper's table marks PART without PE; its Section 3.4 adds learnable
                    # ones at finetuning, which the plan follows
                    assert ours.loc[row.label, "PE (ours)"] == "yes"
                    continue
                assert ours.loc[row.label, f"{col.label} (ours)"] == paper.loc[row.label, col.paper], \
                    (name, row.label, col.label)
                checked += 1
    assert checked >= 10
