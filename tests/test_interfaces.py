"""The declared interfaces: a new method is one class plus one registry line (views,
lifecycle hooks, errors naming it), pair sampling, and modules that import cleanly."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.cell import data_identities, make_plan
from engine.pretrain import ensure_pretrained
from methods import METHODS, MethodEntry, build_method
from methods.base import PretrainMethod, ViewSpec
from methods.part import sample_pairs
from tasks import build_task

REPO = Path(__file__).resolve().parents[1]
TINY_RUN = {
    "tasks.cifar100.data.embedded.num_train": 64, "tasks.cifar100.data.embedded.num_test": 16,
    "tasks.cifar100.pretrain.epochs": 2, "tasks.cifar100.pretrain.global_batch_size": 16,
    "tasks.cifar100.pretrain.warmup_epochs": 0, "tasks.cifar100.loader.num_workers": 0,
}


# ------------------------------------------------------------------------- pair sampling
def _pair_ids(pairs: torch.Tensor, n: int) -> torch.Tensor:
    return pairs[..., 0] * n + pairs[..., 1]


def test_pairs_without_replacement_are_distinct_off_diagonal_and_cover_every_pair():
    n, b = 8, 3
    everything = torch.tensor(sorted(i * n + j for i in range(n) for j in range(n) if i != j))
    full = sample_pairs(b, n, n * (n - 1))
    for row in _pair_ids(full, n):
        assert torch.equal(row.sort().values, everything)        # each ordered pair once
    some = sample_pairs(b, n, 20)
    assert (some[..., 0] != some[..., 1]).all()
    for row in _pair_ids(some, n):
        assert row.unique().numel() == 20
    more = sample_pairs(b, n, n * (n - 1) + 4)                    # one full pass + 4 more
    for row in _pair_ids(more, n):
        counts = torch.bincount(row, minlength=n * n)
        assert counts[everything].min() >= 1 and counts.max() <= 2 and int((counts == 2).sum()) == 4
    assert not torch.equal(full[0], full[1])                      # a fresh order per sample


def test_pairs_with_replacement_is_the_option_that_repeats():
    n = 8
    drawn = sample_pairs(2, n, 500, replacement=True)
    assert (drawn[..., 0] != drawn[..., 1]).all() and (drawn >= 0).all() and (drawn < n).all()
    assert _pair_ids(drawn, n)[0].unique().numel() < 500
    part = build_method("part", encoder=dict(arch="vit_micro", img_size=32, patch_size=4),
                        num_pairs=4096)
    pairs = part.sample_pairs(2, 64)
    assert _pair_ids(pairs, 64)[0].unique().numel() == 64 * 63    # 4096 pairs cover all 4032


# ------------------------------------------------------------------------- a new method
class ViewsAndHooks(PretrainMethod):
    """A method written against the interface only: two global views and one small
    local view, a progress schedule and a per-step hook (as an EMA teacher has)."""
    seen_views: list = []
    progress: list = []
    steps: list = []

    def __init__(self, encoder: dict):
        super().__init__(encoder)
        self.out = torch.nn.Linear(self.encoder.embed_dim, 1)

    @classmethod
    def pretrain_views(cls, **config):
        return (ViewSpec(count=2), ViewSpec(size=16, crop_scale=(0.2, 0.5)))

    def forward(self, samples):
        ViewsAndHooks.seen_views.append([tuple(v.shape[1:]) for v in samples])
        feats = [self.encoder.forward_features(v)[:, 0] for v in samples[:2]]
        return {"loss": self.out(feats[0] - feats[1]).pow(2).mean()}

    def on_train_progress(self, fraction):
        ViewsAndHooks.progress.append(fraction)

    def on_train_iter_end(self):
        ViewsAndHooks.steps.append(1)


def test_a_new_method_is_one_class_and_one_registry_line(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "views-and-hooks", MethodEntry(ViewsAndHooks))
    plan = make_plan("views-and-hooks", "cifar100", cfg_options=TINY_RUN)
    task = build_task(plan, tmp_path)
    task.prepare_data()
    views = ViewsAndHooks.pretrain_views()
    ensure_pretrained(plan, task.pretrain_dataset(views), data_identities(plan)["pretrain"],
                      tmp_path, log=lambda *_: None)
    iters = 2 * (64 // 16)
    assert ViewsAndHooks.seen_views[0] == [(3, 32, 32), (3, 32, 32), (3, 16, 16)]
    assert len(ViewsAndHooks.steps) == iters
    assert ViewsAndHooks.progress == pytest.approx([i / (iters - 1) for i in range(iters)])


def test_optional_parts_of_the_interface_raise_naming_the_method():
    method = ViewsAndHooks(dict(arch="vit_micro", img_size=32, patch_size=4))
    with pytest.raises(ValueError, match="ViewsAndHooks defines no pretext evaluation"):
        method.pretext_outputs(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="ViewsAndHooks predicts no pairwise targets"):
        method.pair_matrices(torch.rand(1, 3, 32, 32), None)


def test_droppos_sigma_reaches_zero_through_the_training_loop(tmp_path, monkeypatch):
    from methods.droppos import DropPos

    sigmas = []
    original = DropPos.label_table

    def recording(self):
        sigmas.append(float(self.sigma))
        return original(self)

    monkeypatch.setattr(DropPos, "label_table", recording)
    cfg = {**TINY_RUN, "methods.droppos.decoder_dim": 32, "methods.droppos.decoder_depth": 1,
           "methods.droppos.decoder_heads": 2}
    plan = make_plan("droppos", "cifar100", cfg_options=cfg)
    task = build_task(plan, tmp_path)
    task.prepare_data()
    ensure_pretrained(plan, task.pretrain_dataset((ViewSpec(),)),
                      data_identities(plan)["pretrain"], tmp_path, log=lambda *_: None)
    start = plan.method.config["sigma_start"]  # the plan holds every constructor value
    assert sigmas[0] == pytest.approx(start) and sigmas[-1] == 0.0
    assert all(a >= b for a, b in zip(sigmas, sigmas[1:]))


# ------------------------------------------------------------------------- imports
def test_importing_the_suite_changes_no_global_state_and_warns_nothing():
    code = (
        "import warnings, torch, numpy as np\n"
        "warnings.simplefilter('error')\n"
        "import engine.runner, engine.pretrain, methods, tasks, benchmarks.run, benchmarks.tables\n"
        "from mmengine.logging.history_buffer import HistoryBuffer\n"
        "ours = {HistoryBuffer, np.ndarray, np.dtype}\n"
        "assert not ours & set(torch.serialization.get_safe_globals())\n"
        "import logging; assert not logging.getLogger().handlers\n"
        "from engine.runner import trust_suite_checkpoints\n"
        "trust_suite_checkpoints(); n = len(torch.serialization.get_safe_globals())\n"
        "trust_suite_checkpoints(); safe = torch.serialization.get_safe_globals()\n"
        "assert len(safe) == n and ours <= set(safe)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


def test_the_registry_speaks_of_unknown_names_with_a_key_error():
    # the command line's answer (one line, exit 2) is tests/test_bad_input.py's
    with pytest.raises(KeyError, match="unknown method 'nope'"):
        build_method("nope", encoder={})
