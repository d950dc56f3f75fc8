"""The whole path on the tiny preset: pretrain on the Runner -> checkpoint -> tasks."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.cell import data_identities, make_plan, pretrained_method, run_cell
from engine.errors import ConfigError, DataError, TrainingError
from engine.pretrain import atomic_torch_save, ensure_pretrained
from methods import METHODS, build_method
from methods.backbone import build_encoder
from methods.part import PART
from tasks import build_task
from tasks.checkpoint import load_encoder_weights

REPO = Path(__file__).resolve().parents[1]

# Small enough for the test budget, large enough for a learning signal.
SMALL = {
    "tasks.cifar100.data.embedded.num_train": 1024, "tasks.cifar100.data.embedded.num_test": 128,
    "tasks.cifar100.pretrain.epochs": 5, 
    "tasks.cifar100.pretrain.warmup_epochs": 0.5,
    "tasks.cifar100.finetune.epochs": 1, "tasks.cifar100.loader.num_workers": 0,
    "tasks.pretext.evaluation.max_images": 128,
}


LEARN = {**SMALL, "tasks.cifar100.pretrain.epochs": 8}


def _pretrain(method, task_name, cache: Path, cfg_options, seed: int = 0):
    """(task, pretrained folder) of a tiny-preset plan."""
    plan = make_plan(method, task_name, seed=seed, cfg_options=cfg_options)
    task = build_task(plan, cache)
    task.prepare_data()
    views = METHODS[method].cls.pretrain_views(**plan.method.config)
    folder = ensure_pretrained(plan, task.pretrain_dataset(views),
                               data_identities(plan)["pretrain"], cache, log=lambda *_: None)
    return task, folder


def _pretrain_and_score(cache: Path, seed: int = 0):
    task, folder = _pretrain("part", "pretext", cache, LEARN, seed)
    return task.run(pretrained=folder, work_dir=cache / "eval"), folder


def test_part_learns_relative_positions_and_a_shuffled_pairing_does_not(tmp_path, monkeypatch):
    metrics, folder = _pretrain_and_score(tmp_path / "good")
    assert metrics["err_euclid"] <= 0.5 * metrics["const_err_euclid"], metrics

    # symmetry: predicted dx/dy matrices on held-out images are close to antisymmetric
    method, task = pretrained_method("part", preset="tiny", cache=tmp_path / "good",
                                     cfg_options=LEARN)
    held = task.heldout_set()
    images = torch.stack([held[i][0] for i in range(4)])
    pred, true = method.pair_matrices(images, method.sample_boxes(images))
    for k in range(2):
        p = pred[..., k]
        asym = (p + p.transpose(1, 2)).norm() / p.norm()
        assert asym < 0.35, f"coordinate {k}: antisymmetry {asym:.2f}"

    # A pairing that does not match the targets cannot be learned: the same training
    # with the head reading shuffled pairs stays near the constant predictor.
    def shuffled_pairing_predict(self, images, boxes, pairs):
        perm = torch.randperm(pairs.shape[1], device=pairs.device)
        return self.head(self.embed(images, boxes), pairs[:, perm])

    # Half the budget suffices to tell them apart: at 4 epochs the true pairing already
    # reaches 0.47 of the constant predictor's error (measured), the shuffled one 1.00.
    monkeypatch.setattr(PART, "predict", shuffled_pairing_predict)
    task, broken = _pretrain("part", "pretext", tmp_path / "broken",
                             {**LEARN, "tasks.cifar100.pretrain.epochs": 4})
    monkeypatch.undo()
    bad = task.run(pretrained=broken, work_dir=tmp_path / "eval2")
    print("learned:", metrics, "shuffled pairing:", bad)
    assert bad["err_euclid"] > 0.9 * bad["const_err_euclid"], bad


def test_run_cell_end_to_end_writes_a_record_and_reuses_the_checkpoint(tmp_path):
    logs = []
    rec = run_cell("part", "cifar100", preset="tiny", cache=tmp_path / "cache",
                   out=tmp_path / "runs", cfg_options={**SMALL, "tasks.cifar100.pretrain.epochs": 1},
                   log=logs.append)
    path = Path(rec["path"])
    on_disk = json.loads(path.read_text())
    # the command line changed the data and the schedule: the record is named by that variant
    assert path.name == ("part[data.embedded.num_test=128,data.embedded.num_train=1024,"
                         "finetune.epochs=1,pretrain.epochs=1,pretrain.warmup_epochs=0.5]"
                         "__cifar100__seed0.json")
    assert 0.0 <= on_disk["metrics"]["acc1"] <= 100.0
    # only the new position embedding and classifier head were freshly initialised
    assert on_disk["metrics"]["new_keys"] == ["head.bias", "head.weight", "pos_embed"]
    for key in ("plan", "sources", "data", "versions", "git", "hardware", "wall_time_s", "preset",
                "seed"):
        assert key in on_disk
    assert on_disk["versions"]["timm"] and on_disk["plan"]["method"]["num_pairs"] == 2048
    assert on_disk["sources"]["pretrain.epochs"] == "command line"
    assert not list(path.parent.glob(".*.tmp"))
    # same (method, config, preset, seed): the pretrained checkpoint is reused
    logs.clear()
    rec2 = run_cell("part", "pretext", preset="tiny", cache=tmp_path / "cache",
                    out=tmp_path / "runs", cfg_options={**SMALL, "tasks.cifar100.pretrain.epochs": 1},
                    log=logs.append)
    assert any("reusing cached checkpoint" in line for line in logs)
    assert rec2["pretrained_checkpoint"] == rec["pretrained_checkpoint"]
    # a variant is recorded under its own name
    assert rec2["metrics"]["err_euclid"] > 0


def test_finetune_loads_every_encoder_weight(tmp_path):
    method = build_method("part", encoder=dict(arch="vit_micro", img_size=32, patch_size=4))
    atomic_torch_save({"state_dict": method.encoder_state_dict()}, tmp_path / "encoder.pth")
    enc = build_encoder("vit_micro", img_size=32, patch_size=4, pos_embed="learn", num_classes=10)
    report = load_encoder_weights(enc, tmp_path / "encoder.pth", log=lambda *_: None)
    assert report == {"missing": ["head.bias", "head.weight", "pos_embed"], "unexpected": []}
    for k, v in method.encoder_state_dict().items():
        assert torch.equal(enc.state_dict()[k], v), k
    # a checkpoint of another architecture is refused with a clear error
    other = build_encoder("vit_micro", img_size=32, patch_size=4, embed_dim=48)
    atomic_torch_save({"state_dict": other.state_dict()}, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="does not fit this encoder"):
        load_encoder_weights(enc, tmp_path / "other.pth")
    (tmp_path / "corrupt.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="cannot read encoder checkpoint"):
        load_encoder_weights(enc, tmp_path / "corrupt.pth")


def test_nan_loss_stops_with_one_clear_error(tmp_path, monkeypatch):
    def nan_forward(self, images, generator=None):
        loss = (self.encoder.cls_token.sum() * float("nan"))
        return {"loss": loss}

    monkeypatch.setattr(PART, "forward", nan_forward)
    with pytest.raises(TrainingError, match="loss became nan at iteration 1"):
        _pretrain("part", "cifar100", tmp_path, SMALL)
    assert not list(tmp_path.glob("pretrain/*/encoder.pth"))


def test_interrupted_pretraining_resumes_from_its_last_epoch(tmp_path, monkeypatch):
    """A run killed after epoch 1 resumes at epoch 2 (this also loads mmengine's own
    checkpoint through torch's weights-only unpickler)."""
    from mmengine.runner import Runner

    opts = {**SMALL, "tasks.cifar100.pretrain.epochs": 2,
            "tasks.cifar100.data.embedded.num_train": 256}

    class Killed(Exception):
        pass

    from engine.runner import FiniteLossHook

    def kill_in_epoch_two(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.epoch == 1:
            raise Killed()

    monkeypatch.setattr(FiniteLossHook, "after_train_iter", kill_in_epoch_two)
    with pytest.raises(Killed):
        _pretrain("part", "cifar100", tmp_path, opts)
    monkeypatch.undo()
    starts = []

    def spy_resume(self, *a, **k):
        out = original_resume(self, *a, **k)
        starts.append(self.train_loop.epoch)
        return out

    original_resume = Runner.resume
    monkeypatch.setattr(Runner, "resume", spy_resume)
    _, folder = _pretrain("part", "cifar100", tmp_path, opts)
    assert starts == [1], "resumed after the finished first epoch"
    assert (folder / "encoder.pth").exists()


def test_paper_preset_resolves_and_builds_its_models(tmp_path):
    for task_name, dim, tokens, pairs in (("cifar100", 384, 64, 2048), ("imagenet", 768, 196, 4802)):
        plan = make_plan("part", task_name, preset="paper", data_root="/nonexistent")
        assert plan.variant == "" and plan.method.config["num_pairs"] == pairs
        model = build_method("part", encoder=plan.encoder.as_kwargs(), **plan.method.config)
        assert model.encoder.embed_dim == dim and model.num_patches == tokens
        assert len(model.encoder.blocks) == 12 and model.encoder.pos_embed is None
        assert plan.pretrain.epochs == (1000 if task_name == "cifar100" else 400)
        assert plan.finetune.epochs == (400 if task_name == "cifar100" else 300)
        del model


def test_finetuning_starts_from_the_pretrained_weights(tmp_path):
    """The Runner must not re-initialise a loaded encoder: with lr 0 the weights after
    training are exactly the checkpoint's."""
    from engine.runner import build_runner
    from tasks.base import RunnerSamples
    from tasks.classifier import ClassifierModel

    method = build_method("part", encoder=dict(arch="vit_micro", img_size=32, patch_size=4))
    atomic_torch_save({"state_dict": method.encoder_state_dict()}, tmp_path / "encoder.pth")
    enc = build_encoder("vit_micro", img_size=32, patch_size=4, pos_embed="learn", num_classes=10)
    load_encoder_weights(enc, tmp_path / "encoder.pth", log=lambda *_: None)
    data = [(torch.randn(3, 32, 32), i % 10) for i in range(16)]
    from engine.plan import FinetunePlan, LoaderPlan

    schedule = FinetunePlan(epochs=1, global_batch_size=8, base_lr=0.0, weight_decay=0.0,
                            warmup_epochs=0, min_lr=0.0, repeated_aug=1)
    runner = build_runner(ClassifierModel(enc, 10), tmp_path / "work", RunnerSamples(data),
                          schedule=schedule, batch_per_process=8, loader=LoaderPlan(num_workers=0))
    runner.train()
    after = runner.model.encoder.state_dict()
    for k, v in method.encoder_state_dict().items():
        assert torch.equal(after[k], v), f"{k} changed: re-initialised by the Runner?"


def test_mae_keeps_its_fixed_sincos_position_embedding_through_pretraining(tmp_path):
    opts = {**SMALL, "tasks.cifar100.data.embedded.num_train": 64,
            "tasks.cifar100.pretrain.epochs": 1, "tasks.cifar100.pretrain.global_batch_size": 32}
    task, folder = _pretrain("mae", "cifar100", tmp_path, opts)
    saved = torch.load(folder / "encoder.pth", weights_only=True)["state_dict"]["pos_embed"]
    plan = task.plan
    fresh = build_method("mae", encoder=plan.encoder.as_kwargs(), **plan.method.config).encoder.pos_embed
    torch.testing.assert_close(saved, fresh.detach())


def test_torchrun_two_processes_train_and_write_one_record(tmp_path):
    """DDP through torchrun (gloo on CPU): each rank sees half the batches per epoch,
    the test metric is gathered, and one record is written."""
    torchrun = Path(sys.executable).parent / "torchrun"
    opts = ["tasks.cifar100.data.embedded.num_train=256", "tasks.cifar100.data.embedded.num_test=64",
            "tasks.cifar100.pretrain.epochs=1", "tasks.cifar100.finetune.epochs=1",
            "tasks.cifar100.loader.num_workers=0",
            # global batches: 32 per rank on 2 ranks
            "tasks.cifar100.pretrain.global_batch_size=64",
            "tasks.cifar100.finetune.global_batch_size=64"]
    res = subprocess.run([str(torchrun), "--nproc_per_node", "2", "-m", "benchmarks.run",
                          "--method", "part", "--task", "cifar100", "--cache", str(tmp_path / "c"),
                          "--out", str(tmp_path / "runs"), "--cfg-options", *opts],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    log = res.stdout + res.stderr
    assert "Epoch(train) [1][4/4]" in log      # 256 images / (32 per rank x 2 ranks)
    records = list((tmp_path / "runs").glob("*.json"))
    assert len(records) == 1
    rec = json.loads(records[0].read_text())
    assert rec["hardware"]["world_size"] == 2 and 0 <= rec["metrics"]["acc1"] <= 100
