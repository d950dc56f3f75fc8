"""The EEG task: 1D PART learns relative shifts, finetuning masks 20 % of the position
embeddings, `--task eeg` runs end to end on generated PhysioNet-format records, and the
frozen protocols (`--protocol knn|linear`) read its encoder without changing it."""
import hashlib
import math

import pytest
import torch

from pipeline.cell import make_plan, run_cell
from encoder_watch import watch_probe_encoder
from methods import build_method
from methods.backbone import build_encoder
from tasks import build_task
from tasks.classifier import ClassifierModel

ENC_1D = dict(arch="vit_micro", img_size=1000, patch_size=50, in_chans=2, modality="1d")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def chirps(b: int, generator=None, length: int = 1000) -> torch.Tensor:
    """Two-channel chirps whose frequency grows along the signal: a window's content
    tells where in the signal it is, as a patch of the embedded scenes does in 2D."""
    t = torch.arange(length).float() / length
    phase = 2 * math.pi * torch.rand(b, 2, 1, generator=generator)
    amp = 0.5 + torch.rand(b, 2, 1, generator=generator)
    noise = 0.05 * torch.randn(b, 2, length, generator=generator)
    return amp * torch.sin(2 * math.pi * (2 * t + 20 * t ** 2) + phase) + noise


def test_part_1d_learns_relative_time_shifts():
    torch.manual_seed(0)
    model = build_method("part", encoder=ENC_1D, num_patches=20, num_pairs=128)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        loss = model(chirps(32, g))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        torch.manual_seed(1)
        out = model.summarize_pretext(model.pretext_outputs(chirps(64, torch.Generator().manual_seed(9))))
    # the best constant predictor is ~6 window lengths off; a model that reads the
    # content places windows within about one
    assert out["err_euclid"] < 0.3 * out["const_err_euclid"], out


def test_finetuning_hides_exactly_a_fifth_of_the_position_embeddings():
    enc = build_encoder(**{**ENC_1D, "img_size": 1500}, pos_embed="learn", num_classes=5)
    with torch.no_grad():
        enc.pos_embed.normal_()
    model = ClassifierModel(enc, 5, mixup=0.0, cutmix=0.0, smoothing=0.0, pos_embed_mask=0.2)
    hide = model.position_mask(4, "cpu")
    assert hide.shape == (4, 30) and (hide.sum(1) == 6).all()      # 20 % of 30 patches
    assert not torch.equal(hide[0], hide[1])                        # drawn per sample
    x = torch.randn(4, 2, 1500)
    enc.eval()
    with torch.no_grad():
        got = model.logits(x, hide)
        # by hand: tokens + position embeddings, zero where hidden, [CLS] keeps its own
        tokens = enc.patch_embed(x)
        pos = enc.pos_embed[:, 1:].expand(4, -1, -1) * (~hide)[..., None]
        cls = enc.cls_token.expand(4, -1, -1) + enc.pos_embed[:, :1]
        h = enc.norm(enc.blocks(torch.cat([cls, tokens + pos], dim=1)))
        torch.testing.assert_close(got, enc.head(h[:, 0]))
        assert not torch.allclose(got, enc(x))                      # the mask changed something
    # evaluation uses every position embedding
    preds = model(x, torch.zeros(4, dtype=torch.long), mode="predict")
    assert [p["pred"] for p in preds] == enc(x).argmax(-1).tolist()


TINY_EEG = {
    "tasks.eeg.data.embedded.n_training": 6, "tasks.eeg.data.embedded.n_test": 2,
    "tasks.eeg.data.embedded.hours": 0.25,
    "tasks.eeg.eeg.pretrain_subjects": 4, "tasks.eeg.eeg.finetune_subjects": 2,
    "tasks.eeg.eeg.test_subjects": 2, "tasks.eeg.eeg.cache_workers": 1,
    "tasks.eeg.pretrain.epochs": 1, "tasks.eeg.pretrain.global_batch_size": 32,
    "tasks.eeg.finetune.epochs": 2, "tasks.eeg.finetune.global_batch_size": 32,
    "tasks.eeg.loader.num_workers": 0, "methods.part.num_pairs": 64,
}


def test_eeg_task_runs_end_to_end_on_generated_records(tmp_path, monkeypatch):
    record = run_cell("part", "eeg", cache=tmp_path / "cache", out=tmp_path / "runs",
                      cfg_options=TINY_EEG, log=lambda *_: None)
    m = record["metrics"]
    assert -1.0 <= m["kappa"] <= 1.0 and 0 <= m["acc"] <= 100 and 0 <= m["macro_f1"] <= 1
    # finetuning is checked as the image tasks' is: its last epoch's loss, and warnings
    assert m["final_train_loss"] > 0 and isinstance(record["warnings"], list)
    splits = m["data"]["splits"]
    assert (splits["pretrain"]["records"], splits["finetune"]["records"],
            splits["test"]["records"]) == (4, 2, 2)
    assert m["data"]["skipped_records"] == []
    # the split is by subject: no record in two splits (the task's own split)
    plan = make_plan("part", "eeg", cfg_options=TINY_EEG)
    task = build_task(plan, tmp_path / "cache")
    task.prepare_data(log=lambda *_: None)
    split = task.split(log=lambda *_: None)
    names = [n for part in split.values() for n in part]
    assert len(names) == len(set(names)) == 8
    assert set(split["test"]).isdisjoint(split["pretrain"])

    # the frozen protocols on the same pretrained checkpoint: the encoder is read, never
    # changed (in memory and on disk), and one feature extraction serves both
    from pipeline.cell import with_protocol
    from tasks.protocols import frozen_metric_names

    encoder_file = next((tmp_path / "cache" / "pretrain").glob("*/encoder.pth"))
    on_disk = hashlib.sha256(encoder_file.read_bytes()).hexdigest()
    hashes = watch_probe_encoder(monkeypatch)
    frozen = {}
    # the finetuning values are not the frozen runs' (and a record's name must stay short)
    common = {k: v for k, v in TINY_EEG.items()
              if not k.startswith(("tasks.eeg.finetune.", "tasks.eeg.eeg.cache_workers"))}
    for method, protocol in (("part", "knn"), ("part", "linear"), ("scratch", "knn")):
        opts = with_protocol("eeg", protocol, {**common, "tasks.eeg.probe.epochs": 3}
                             if protocol == "linear" else common)
        frozen[method, protocol] = run_cell(method, "eeg", cache=tmp_path / "cache",
                                            out=tmp_path / "runs", cfg_options=opts,
                                            log=lambda *_: None)
    assert all(before == after for before, after in hashes) and len(hashes) == 3
    assert hashes[0][0] == hashes[1][0] != hashes[2][0]    # the checkpoint, then a random encoder
    assert hashlib.sha256(encoder_file.read_bytes()).hexdigest() == on_disk
    for (method, protocol), rec in frozen.items():
        m = rec["metrics"]
        assert rec["plan"]["protocol"]["name"] == protocol
        assert f"protocol.name={protocol}]__eeg__seed0.json" in rec["path"]
        names = frozen_metric_names(protocol, ("kappa", "acc1"))
        assert set(names) <= set(m) and isinstance(rec["warnings"], list)
        assert all(-1.0 <= m[n] <= 1.0 if "kappa" in n else 0.0 <= m[n] <= 100.0 for n in names)
        assert m["data"]["splits"]["test"]["records"] == 2 and 0 < m["majority_acc"] <= 100
    assert frozen["part", "knn"]["metrics"]["frozen_encoder"].startswith("pretrained")
    assert frozen["scratch", "knn"]["metrics"]["frozen_encoder"].startswith("random initialisation, seed 0")
    assert frozen["part", "linear"]["metrics"]["probe_steps"] == 3
    # cls and avg of both splits, once per encoder
    assert len(list((tmp_path / "cache" / "features").glob("*.pt"))) == 8


def test_protocol_in_the_eeg_plan(tmp_path, monkeypatch, capsys):
    from benchmarks.run import main

    monkeypatch.setattr("engine.cli.configure_logging", lambda: None)
    assert main(["--method", "part", "--task", "eeg", "--protocol", "knn", "--dry-run",
                 "--out", str(tmp_path), "--cache", str(tmp_path / "cache")]) == 0
    text = capsys.readouterr().out
    section = text[text.index("\n  protocol:"):].splitlines()
    assert section[2].split() == ["name", "knn", "[command", "line]"]
    assert section[3].split()[:2] == ["knn_k", "20"]
    assert "\n  probe:" in text
    assert f"record: {tmp_path / 'part[protocol.name=knn]__eeg__seed0.json'}" in text
    # the frozen ranking of Table 3's methods names metrics the eeg records have
    from benchmarks.rank import rank_table
    from tasks.eeg import EEGTask

    metrics = EEGTask.protocol_metrics()
    assert metrics["knn"] == ("knn_kappa_cls", "knn_acc1_cls", "knn_kappa_avg", "knn_acc1_avg")
    assert metrics["linear"] == ("linear_kappa", "linear_acc1")
    cols = rank_table("eeg").columns
    assert [c.metric for c in cols[:3]] == ["knn_kappa_cls", "knn_kappa_avg", "linear_kappa"]
    assert all(c.metric in metrics[c.protocol] for c in cols) and len(cols) == 6


def test_a_2d_only_variant_on_the_eeg_task_is_one_clear_error():
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="scale_aspect sampling is defined for 2D images only"):
        make_plan("part-aspect-scale", "eeg")
