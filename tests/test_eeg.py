"""The EEG task: 1D PART learns relative shifts, finetuning masks 20 % of the position
embeddings, and `--task eeg` runs end to end on generated PhysioNet-format records."""
import math

import pytest
import torch

from benchmarks.run import make_plan, run_cell
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


def test_eeg_task_runs_end_to_end_on_generated_records(tmp_path):
    record = run_cell("part", "eeg", cache=tmp_path / "cache", out=tmp_path / "runs",
                      cfg_options=TINY_EEG, log=lambda *_: None)
    m = record["metrics"]
    assert -1.0 <= m["kappa"] <= 1.0 and 0 <= m["acc"] <= 100 and 0 <= m["macro_f1"] <= 1
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


def test_a_2d_only_variant_on_the_eeg_task_is_one_clear_error():
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match="scale_aspect sampling is defined for 2D images only"):
        make_plan("part-aspect-scale", "eeg")
