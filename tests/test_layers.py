"""The house has floors: methods < engine < tasks < pipeline < benchmarks. A module
imports only from its own floor or below, and no import circle exists (imports inside
functions count: they are edges all the same). A new task is its module, its sections
and one registry line: adding one touches neither engine/ nor pipeline/."""
import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FLOORS = ("methods", "engine", "tasks", "pipeline", "benchmarks")


def module_imports() -> dict[str, set[str]]:
    """Each suite module -> the suite modules it imports (relative imports resolved, a
    ``from package import name`` naming a submodule counted as that submodule)."""
    files = {}
    for pkg in FLOORS:
        for path in (REPO / pkg).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            files[name] = path

    def owner(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {owner(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets |= {owner(f"{base}.{a.name}") for a in node.names}
        graph[name] = {t for t in targets if t and t != name}
    return graph


def test_no_module_imports_from_a_higher_floor():
    up = [f"{a} -> {b}" for a, targets in module_imports().items() for b in targets
          if FLOORS.index(b.split(".")[0]) > FLOORS.index(a.split(".")[0])]
    assert not up, f"imports from a higher floor ({' < '.join(FLOORS)}): {'; '.join(sorted(up))}"


def test_no_import_circle():
    graph = module_imports()
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_the_checker_sees_a_circle_and_an_upward_import(tmp_path, monkeypatch):
    """The two checks above fail on a tree that has what they look for."""
    for pkg in FLOORS:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "engine" / "a.py").write_text("from tasks import b\n")
    (tmp_path / "tasks" / "b.py").write_text("def f():\n    from engine.a import x\n")
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    with pytest.raises(AssertionError, match="engine.a -> tasks.b"):
        test_no_module_imports_from_a_higher_floor()
    with pytest.raises(AssertionError, match=r"\['engine.a', 'tasks.b'\]"):
        test_no_import_circle()


# ------------------------------------------------------------------ adding a task
@dataclass(frozen=True)
class CountingPlan:
    """The new task's own section: which split to count."""
    split: str = "test"
    scale: float = 1.0


def test_a_new_task_is_its_module_sections_and_one_registry_line(tmp_path, monkeypatch):
    """A task that counts the images of a classification data set per class, with a
    section of its own: registered with one line, configured by a preset file (data),
    resolved, run and recorded by the pipeline as it is."""
    import json

    from engine.plan import DataPlan, EncoderPlan, LoaderPlan
    from pipeline.cell import make_plan, run_cell
    from pipeline.presets import PRESETS
    from tasks import TASKS
    from tasks.base import Task
    from tasks.data.sources import data_source

    class CountingTask(Task):
        name, kind = "counting", "classification"
        metric_names = ("images", "largest_class_share")
        sections = {"data": DataPlan, "encoder": EncoderPlan, "loader": LoaderPlan,
                    "counting": CountingPlan}

        def check_data(self):
            pass

        def train_sizes(self):
            return {"pretrain": None, "finetune": None}

        def run(self, *, pretrained, work_dir, log=print):
            import collections

            own = self.plan.options["counting"]
            held = data_source(self.plan.data.dataset).heldout_set(self.root, self.plan.encoder)
            counts = collections.Counter(int(held[i][1]) for i in range(len(held)))
            return {"images": float(len(held)) * own.scale,
                    "largest_class_share": max(counts.values()) / len(held)}

    monkeypatch.setitem(TASKS, "counting", CountingTask)  # the one registry line
    preset = tmp_path / "with_counting.py"
    preset.write_text(
        f'_base_ = ["{(PRESETS / "tiny.py").as_posix()}"]\n'
        'tasks = dict(counting=dict(\n'
        '    data=dict(dataset="cifar100", embedded=dict(num_train=40, num_test=30,\n'
        '              num_classes=3, seed=0)),\n'
        '    encoder=dict(arch="vit_micro", img_size=32, patch_size=4),\n'
        '    loader=dict(num_workers=0), counting=dict(scale=2.0)))\n')
    plan = make_plan("scratch", "counting", preset=str(preset),
                     cfg_options={"tasks.counting.counting.split": "test"})
    assert plan.options["counting"] == CountingPlan(split="test", scale=2.0)
    assert plan.sources["counting.scale"] == "preset"
    rec = run_cell("scratch", "counting", preset=str(preset), out=tmp_path / "runs",
                   cache=tmp_path / "cache", cfg_options={"tasks.counting.counting.split": "test"},
                   log=lambda *_: None)
    assert rec["metrics"]["images"] == 60.0            # 30 test images x scale 2
    assert 1 / 3 <= rec["metrics"]["largest_class_share"] <= 1.0
    written = json.loads(Path(rec["path"]).read_text())
    assert written["plan"]["counting"] == {"split": "test", "scale": 2.0}
