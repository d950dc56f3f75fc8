"""Records for table tests: written under the plan today's code resolves for the cell
(``plan_hash`` given: another plan's, i.e. a stale record)."""
from pipeline.cell import make_plan
from engine.plan import plan_to_dict, stable_hash
from engine.records import record_path, write_record

COMMIT = "abcdef0123456789"


def write_cell_record(runs, method, task, seed, metrics, row=None, warnings=(), plan_hash=None):
    plan = make_plan(method, task, preset="tiny", seed=seed, row=row or {})
    path = record_path(runs, plan)
    write_record({"method": method, "task": task, "seed": seed, "status": "ok",
                  "metrics": metrics, "warnings": list(warnings),
                  "plan_hash": plan_hash or stable_hash(plan_to_dict(plan)),
                  "git": {"commit": COMMIT, "dirty": False}}, path)
    return path
