"""The resolved run plan: layer precedence, unknown keys, variants, global batches, the
paper preset's protocol value by value, cache keys with the data's identity, --dry-run."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cell import data_identities, make_plan, run_key
from pipeline.describe import dry_run
from pipeline.presets import PRESETS
from engine.errors import ConfigError
from engine.pretrain import pretrain_key

REPO = Path(__file__).resolve().parents[1]

# A preset that sets the same keys at every layer it has (inherits tiny).
LAYERED = """
_base_ = ["{tiny}"]
preset = "layered"
methods = dict(part=dict(num_pairs=100, head_num_heads=2), mae=dict(mask_ratio=0.5))
tasks = dict(
    imagenet=dict(pretrain=dict(epochs=7),
                  method_overrides=dict(part=dict(num_pairs=200)),
                  finetune=dict(recipe="mae", min_lr=3e-6)),
)
"""


@pytest.fixture(scope="module")
def layered(tmp_path_factory):
    path = tmp_path_factory.mktemp("presets") / "layered.py"
    path.write_text(LAYERED.format(tiny=(PRESETS / "tiny.py").as_posix()))
    return str(path)


@pytest.mark.parametrize("row, cli, expected, source", [
    ({}, {}, 200, "task"),                                     # task > preset > default
    ({"method.num_pairs": 300}, {}, 300, "row"),               # row > task
    ({"method.num_pairs": 300}, {"methods.part.num_pairs": 400}, 400, "command line"),
    ({}, {"tasks.imagenet.method_overrides.part.num_pairs": 250}, 250, "command line"),
])
def test_precedence_of_the_method_layers(layered, row, cli, expected, source):
    plan = make_plan("part", "imagenet", preset=layered, row=row, cfg_options=cli)
    assert plan.method.config["num_pairs"] == expected
    assert plan.sources["method.num_pairs"] == source
    # untouched keys keep their own layer
    assert plan.method.config["head_num_heads"] == 2 and plan.sources["method.head_num_heads"] == "preset"
    assert plan.method.config["head"] == "cross_attention"
    assert plan.sources["method.head"] == "default"


def test_precedence_of_schedule_layers_and_the_recipe(layered):
    plan = make_plan("part", "imagenet", preset=layered)
    assert (plan.pretrain.epochs, plan.sources["pretrain.epochs"]) == (7, "preset")
    assert plan.sources.get("pretrain.weight_decay") is None   # the dataclass default
    # the recipe is a layer above the defaults and below the preset
    assert (plan.finetune.layer_decay, plan.sources["finetune.layer_decay"]) == (0.65, "recipe mae")
    assert (plan.finetune.min_lr, plan.sources["finetune.min_lr"]) == (3e-6, "preset")
    row = make_plan("part", "imagenet", preset=layered, row={"pretrain.epochs": 8})
    assert (row.pretrain.epochs, row.sources["pretrain.epochs"]) == (8, "row")
    cli = make_plan("part", "imagenet", preset=layered, row={"pretrain.epochs": 8},
                    cfg_options={"tasks.imagenet.pretrain.epochs": 9})
    assert (cli.pretrain.epochs, cli.sources["pretrain.epochs"]) == (9, "command line")
    # other tasks are not touched by imagenet's overrides
    cifar = make_plan("part", "cifar100", preset=layered)
    assert cifar.method.config["num_pairs"] == 100 and cifar.finetune.layer_decay is None


def test_variants_inherit_every_layer_of_their_base(layered):
    grid = make_plan("part-grid", "imagenet", preset=layered)
    assert grid.method.config["num_pairs"] == 200 and grid.method.config["head_num_heads"] == 2
    assert grid.method.config["sampling"] == "grid" and grid.sources["method.sampling"] == "registry"
    assert grid.variant == ""
    # a command-line value for the base applies to the variant too
    grid = make_plan("part-grid", "imagenet", preset=layered, cfg_options={"methods.part.num_pairs": 512})
    assert grid.method.config["num_pairs"] == 512 and grid.variant == "num_pairs=512"
    nope = make_plan("mp3-nope", "cifar100")
    assert nope.finetune.pos_embed is False and "finetune_pos_embed" not in nope.method.config


def test_a_data_or_encoder_change_names_its_record_apart_from_the_default_cell(tmp_path):
    """A row or command-line change of the data or the encoder is a variant: its record
    never overwrites the default cell's (five times the test images is another number)."""
    from pipeline.cell import cell_record_path

    default = cell_record_path("part", "cifar100", out=tmp_path)
    row = {"encoder.arch": "vit_micro_wide", "data.embedded.num_test": 5000}
    plan = make_plan("part", "cifar100", row=row)
    assert plan.variant == "data.embedded.num_test=5000,encoder.arch=vit_micro_wide"
    assert plan.data.embedded["num_test"] == 5000 and plan.sources["data.embedded.num_test"] == "row"
    assert cell_record_path("part", "cifar100", out=tmp_path, row=row) != default
    cli = {"tasks.cifar100.data.embedded.num_test": 5000}
    assert make_plan("part", "cifar100", cfg_options=cli).variant == "data.embedded.num_test=5000"
    assert cell_record_path("part", "cifar100", out=tmp_path, cfg_options=cli) != default
    # a data root replaces the embedded data: their options neither apply nor name the record
    real = make_plan("part", "cifar100", row=row, data_root=str(tmp_path))
    assert real.data.embedded is None and real.variant == "encoder.arch=vit_micro_wide"
    # the data a task pretrains on (coco: generated ImageNet-format scenes) as well
    coco = make_plan("part", "coco", cfg_options={"tasks.coco.pretrain_data.embedded.num_train": 500})
    assert coco.variant == "pretrain_data.embedded.num_train=500"
    assert coco.pretrain_data.embedded["num_train"] == 500


@pytest.mark.parametrize("kwargs, message", [
    (dict(cfg_options={"methods.part.num_pair": 1}), "'num_pair' for method 'part'"),
    (dict(cfg_options={"methods.nope.num_pairs": 1}), "unknown method 'nope'"),
    (dict(cfg_options={"tasks.cifar100.pretrain.epoch": 1}), "unknown key 'epoch' in pretrain"),
    (dict(cfg_options={"tasks.cifar100.pretrian.epochs": 1}), "unknown key 'pretrian' in tasks.cifar100"),
    (dict(cfg_options={"tasks.cifar100.detector.img_size": 1}), "unknown key 'detector' in tasks.cifar100"),
    (dict(cfg_options={"tasks.nope.pretrain.epochs": 1}), "unknown task 'nope'"),
    (dict(cfg_options={"epochs": 1}), "expected methods.<method>.<key>"),
    (dict(cfg_options={"tasks.cifar100.finetune.recipe": "moco"}), "unknown finetuning recipe 'moco'"),
    (dict(cfg_options={"tasks.cifar100.method_overrides.part.pairs": 1}), "'pairs' for method 'part'"),
    (dict(row={"method.pairs": 1}), "'pairs' for method 'part'"),
    (dict(row={"pretrain.epoch": 1}), "unknown key 'epoch' in pretrain"),
    (dict(row={"optimizer.lr": 1}), "table row override 'optimizer.lr'"),
    (dict(cfg_options={"tasks.cifar100.pretrain.augment.flip": True}), "unknown key 'flip' in pretrain"),
])
def test_an_unknown_key_at_any_layer_is_an_error_naming_it(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make_plan("part", "cifar100", **kwargs)


def test_an_unknown_key_in_a_preset_file_is_an_error(tmp_path):
    for body, message in (
            ('methods = dict(part=dict(num_pars=1))', "'num_pars' for method 'part'"),
            ('tasks = dict(cifar100=dict(loader=dict(workers=1)))', "unknown key 'workers' in loader"),
            ('tasks = dict(cifar100=dict(method_overrides=dict(part=dict(x=1))))', "'x' for method")):
        path = tmp_path / "bad.py"
        path.write_text(f'_base_ = ["{(PRESETS / "tiny.py").as_posix()}"]\n{body}\n')
        with pytest.raises(ConfigError, match=message):
            make_plan("part", "cifar100", preset=str(path))


# --------------------------------------------------------------------------- paper preset
CLASSIFICATION_METHODS = ("part", "part-grid", "part-aspect-scale", "mae", "droppos", "mp3",
                          "mp3-nope", "scratch", "scratch-nope")


@pytest.mark.parametrize("method", CLASSIFICATION_METHODS)
@pytest.mark.parametrize("task", ("cifar100", "imagenet", "coco"))
def test_paper_plan_of_every_cell(method, task):
    plan = make_plan(method, task, preset="paper", world_size=8)
    one = make_plan(method, task, preset="paper", world_size=1)
    assert plan.variant == "" and plan.seed == 0
    if method.startswith("part"):
        assert plan.method.config["num_pairs"] == (2048 if task == "cifar100" else 4802)
    if method.startswith(("scratch",)):
        assert plan.pretrain is None
    else:
        expected_epochs = {"cifar100": 1000, "imagenet": 400, "coco": 200}[task]
        assert plan.pretrain.epochs == expected_epochs
        glob = 256 if task == "cifar100" else 1024
        assert plan.pretrain.global_batch_size == glob
        assert (plan.pretrain_batch(), one.pretrain_batch()) == (glob // 8, glob)
        assert plan.pretrain.lr == pytest.approx(5e-4)          # the paper's, at its batch
    ft = plan.finetune
    if task == "coco":
        assert (ft.global_batch_size, plan.finetune_batch(), one.finetune_batch()) == (64, 8, 64)
        assert (ft.epochs, ft.lr, ft.layer_decay, ft.weight_decay) == (12, 1e-4, 0.7, 0.1)
        assert plan.detector.img_size == 1024 and plan.detector.global_blocks == (2, 5, 8, 11)
    else:
        # DeiT, for every row: no layer decay, repeated augmentation, min lr 1e-5,
        # lr 5e-4 x global batch / 512
        glob = 256 if task == "cifar100" else 1024
        assert (ft.recipe, ft.layer_decay, ft.repeated_aug, ft.min_lr) == ("deit", None, 3, 1e-5)
        assert ft.global_batch_size == glob and plan.finetune_batch() == glob // 8
        assert ft.lr == pytest.approx(5e-4 * glob / 512)
        assert ft.epochs == (400 if task == "cifar100" else 300)
        assert ft.pos_embed is (not method.endswith("nope"))


def test_paper_batches_that_do_not_divide_are_an_error_naming_both_numbers():
    with pytest.raises(ConfigError, match="global batch 1024 does not divide over world size 3"):
        make_plan("part", "imagenet", preset="paper", world_size=3)
    plan = make_plan("part", "coco", preset="paper", world_size=4,
                     cfg_options={"tasks.coco.finetune.grad_accum": 2})
    assert plan.finetune_batch() == 8 and plan.finetune.global_batch_size == 64


def test_paper_tables_state_the_papers_epochs():
    from benchmarks.tables import TABLES

    aspect = next(r for r in TABLES["table1"].rows_for("paper") if r.method == "part-aspect-scale")
    plan = make_plan("part-aspect-scale", "coco", preset="paper", row=aspect.plan_overrides("paper"))
    assert plan.pretrain.epochs == 100 and plan.sources["pretrain.epochs"] == "row"
    assert make_plan("part-aspect-scale", "coco", row=aspect.plan_overrides("tiny")).pretrain.epochs == 6
    fig8 = TABLES["fig8"].rows_for("paper")
    assert sorted({(r.overrides["method.num_pairs"], r.overrides["pretrain.epochs"]) for r in fig8}) == \
        sorted((p, e) for p in (512, 1024, 2048, 4096) for e in (400, 1000, 4000))
    assert "aspect + scale row pretrains 100 epochs" in TABLES["table1"].note_for("paper")
    # rows with their own schedules (Tables 6 and 7): the epochs their labels and the
    # paper's rows state (the full check against the paper's CSV is in test_tables)
    expected = {("table6", "MAE (150 ep)"): (150, 150), ("table6", "MAE (1600 ep)"): (1600, 100),
                ("table6", "MP3 w/o PE"): (100, 300), ("table6", "DropPos"): (200, 100),
                ("table6", "PART"): (400, 300), ("table7", "MAE"): (2000, 400),
                ("table7", "MP3 w/ PE"): (2000, 400), ("table7", "MP3 w/o PE"): (2000, 400),
                ("table7", "PART"): (1000, 400)}
    task = {"table6": "imagenet", "table7": "cifar100"}
    for (name, label), epochs in expected.items():
        row = next(r for r in TABLES[name].rows_for("paper") if r.label == label)
        plan = make_plan(row.method, task[name], preset="paper", row=row.plan_overrides("paper"))
        assert (plan.pretrain.epochs, plan.finetune.epochs) == epochs, (name, label)


def test_eeg_paper_dry_run_without_data_estimates_its_iterations():
    info = dry_run("part", "eeg", preset="paper")
    # 1653 pretraining and 10 finetuning subjects, one record of ~960 windows each, batch 256
    assert info["iterations"]["pretrain"]["per_epoch"] == 1653 * 960 // 256
    assert info["iterations"]["pretrain"]["total"] == 1653 * 960 // 256 * 1000
    assert info["iterations"]["finetune"]["total"] == 10 * 960 // 256 * 100
    assert "estimate" in info["iterations"]["finetune"]["count"]


@pytest.mark.parametrize("size,first", [(32, "RandomCrop"), (64, "RandomResizedCrop")])
def test_finetuning_crop_follows_deits_small_input_rule(size, first):
    """At 32 px and below DeiT pads by 4 and crops; above it keeps the resized crop."""
    import torch
    from PIL import Image

    from tasks import build_task

    plan = make_plan("scratch", "cifar100", cfg_options={
        "tasks.cifar100.encoder.img_size": size, "tasks.cifar100.encoder.patch_size": 8})
    train_tf, _ = build_task(plan, REPO / "cache").finetune_transforms()
    crop = train_tf.transforms[0]
    assert type(crop).__name__.startswith(first)
    if first == "RandomCrop":
        assert crop.padding == 4 and crop.size == (size, size)
        # a padded crop keeps the image's scale: an all-white image stays white but for
        # a border of at most 4 px of zero padding
        torch.manual_seed(0)
        out = crop(Image.new("RGB", (size, size), (255, 255, 255)))
        import numpy as np

        white = (np.asarray(out) == 255).all(-1)
        assert white.sum() >= (size - 4) ** 2 and white.any(0).sum() >= size - 4


# --------------------------------------------------------------------------- keys
def _cifar_root(tmp_path, name, seed):
    from tasks.data.synthetic import write_cifar100

    root = tmp_path / name
    write_cifar100(root, 64, 32, 32, 4, seed)
    return root


def test_cache_key_follows_the_data_and_ignores_loader_knobs(tmp_path):
    a, b = _cifar_root(tmp_path, "a", 0), _cifar_root(tmp_path, "b", 1)

    def key(root, **opts):
        plan = make_plan("part", "cifar100", data_root=root, cfg_options=opts)
        return pretrain_key(plan, data_identities(plan)["pretrain"])

    assert key(a) != key(b) != key(None)
    assert key(a) == key(a, **{"tasks.cifar100.loader.num_workers": 7,
                               "tasks.cifar100.loader.log_interval": 3})
    assert key(a) != key(a, **{"tasks.cifar100.pretrain.epochs": 7})
    # replacing a data file changes the identity
    train = a / "cifar-100-python" / "train"
    train.write_bytes(train.read_bytes() + b"\0")
    assert key(a) != key(b)
    plan_a = make_plan("part", "cifar100", data_root=a)
    plan_b = make_plan("part", "cifar100", data_root=b)
    assert run_key(plan_a, data_identities(plan_a)) != run_key(plan_b, data_identities(plan_b))


def test_same_command_on_two_data_roots_pretrains_twice(tmp_path):
    from pipeline.cell import run_cell

    opts = {"tasks.cifar100.pretrain.epochs": 1, "tasks.cifar100.finetune.epochs": 1,
            "tasks.cifar100.pretrain.global_batch_size": 32,
            "tasks.cifar100.finetune.global_batch_size": 32, "tasks.cifar100.loader.num_workers": 0}
    logs = []
    recs = []
    for name, seed in (("a", 0), ("b", 1), ("a", 0)):
        recs.append(run_cell("part", "cifar100", data_root=_cifar_root(tmp_path, name, seed)
                             if not (tmp_path / name).exists() else tmp_path / name,
                             cache=tmp_path / "cache", out=tmp_path / f"runs-{name}", cfg_options=opts,
                             log=logs.append))
    started = [line for line in logs if line.startswith("[pretrain] part:")]
    reused = [line for line in logs if "reusing cached checkpoint" in line]
    assert len(started) == 2 and len(reused) == 1, logs
    assert recs[0]["pretrained_checkpoint"] != recs[1]["pretrained_checkpoint"]
    assert recs[2]["pretrained_checkpoint"] == recs[0]["pretrained_checkpoint"]
    assert recs[1]["data"]["pretrain"]["root"] == str((tmp_path / "b").resolve())
    # records are named by their data: a user's folder never replaces another data set's cell
    names = [Path(r["path"]).name for r in recs]
    assert names[0].startswith("part[") and "__cifar100@a-" in names[0] and "__cifar100@b-" in names[1]
    assert names[2] == names[0]


def test_tiny_coco_on_a_user_root_pretrains_on_the_embedded_source_and_says_so(tmp_path):
    plan = make_plan("part", "coco", data_root=tmp_path)
    assert plan.pretrain_data.embedded and plan.pretrain_data.root is None
    assert "embedded imagenet scenes" in plan.pretrain_data.note
    assert make_plan("part", "coco").pretrain_data.note == ""
    paper = make_plan("part", "coco", preset="paper", data_root=tmp_path)
    assert paper.pretrain_data.missing


# --------------------------------------------------------------------------- seeds
def test_detector_initial_weights_follow_the_seed():

    from mmengine.runner import set_random_seed

    from tasks.coco import build_detector

    plan = make_plan("part", "coco")

    def build(seed):
        set_random_seed(seed)
        model = build_detector(plan.detector, plan.encoder, num_classes=10)
        return {k: v.clone() for k, v in model.state_dict().items()}

    a, b, c = build(0), build(0), build(1)
    assert all((a[k] == b[k]).all() for k in a)
    for name in ("roi_head.bbox_head.fc_cls.weight", "backbone.pos_embed", "neck.stages.0.0.weight"):
        keys = [k for k in a if k == name or k.startswith(name.rsplit(".", 1)[0])]
        assert keys and any(not (a[k] == c[k]).all() for k in keys), name


# --------------------------------------------------------------------------- dry run
def test_dry_run_paper_without_data_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    out, cache = tmp_path / "runs", tmp_path / "cache"
    res = subprocess.run([sys.executable, "-m", "benchmarks.run", "--method", "part-grid", "--task",
                          "coco", "--preset", "paper", "--dry-run", "--world-size", "8", "--json",
                          "--out", str(out), "--cache", str(cache)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    info = json.loads(res.stdout)
    assert info["world_size"] == 8 and info["method"]["name"] == "part-grid"
    assert info["method"]["num_pairs"] == 4802
    assert (info["pretrain"]["epochs"], info["pretrain"]["global_batch_size"],
            info["pretrain"]["batch_size_per_process"], info["pretrain"]["lr"]) == (200, 1024, 128, 5e-4)
    assert (info["finetune"]["epochs"], info["finetune"]["global_batch_size"],
            info["finetune"]["batch_size_per_process"], info["finetune"]["lr"],
            info["finetune"]["layer_decay"]) == (12, 64, 8, 1e-4, 0.7)
    assert info["checkpoint"]["cached"] is False and "key" in info["checkpoint"]
    assert info["record"]["path"] == str(out / "part-grid__coco__seed0.json")
    assert len(info["missing_data"]) == 2
    # published sizes: ImageNet 1281167 / 1024 per step, COCO's 117266 annotated images
    assert info["iterations"]["pretrain"]["per_epoch"] == 1281167 // 1024
    assert info["iterations"]["finetune"]["total"] == 1832 * 12
    assert not out.exists() and not cache.exists()

    # the text form, in this process (one interpreter start above is the command's check)
    from benchmarks.run import main

    assert main(["--method", "scratch", "--task", "imagenet", "--preset", "paper", "--dry-run",
                 "--out", str(out), "--cache", str(cache)]) == 0
    text = capsys.readouterr().out
    assert "missing data: data: no root for imagenet" in text
    assert "layer_decay                  None" in text
    assert "lr_rule                      0.0005 x 1024 / 512" in text
    assert not out.exists() and not cache.exists()


def test_dry_run_counts_a_real_root(tmp_path):
    root = _cifar_root(tmp_path, "a", 0)
    info = dry_run("part", "cifar100", data_root=root, cache=tmp_path / "cache",
                   cfg_options={"tasks.cifar100.pretrain.global_batch_size": 16})
    it = info["iterations"]["pretrain"]
    assert (it["num_images"], it["count"], it["per_epoch"], it["total"]) == (64, "counted", 4, 24)
    assert info["checkpoint"]["key"].startswith("part-s0-") and not info["missing_data"]
    assert not (tmp_path / "cache").exists()


# --------------------------------------------------------------------------- resume
def _interrupt_then_rerun(tmp_path, monkeypatch, method, task, killed_on, reruns, opts):
    """Kill a run in its second finetuning epoch on ``killed_on``, then rerun the same
    command on each of ``reruns``; returns the reruns' '[run] ...' lines and the epoch
    each of their training loops started at."""
    from mmengine.runner import EpochBasedTrainLoop

    from pipeline.cell import run_cell
    from engine.runner import FiniteLossHook

    class Killed(Exception):
        pass

    def kill_in_epoch_two(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.epoch == 1:
            raise Killed()

    kw = dict(cache=tmp_path / "cache", out=tmp_path / "runs", cfg_options=opts)
    with monkeypatch.context() as m:
        m.setattr(FiniteLossHook, "after_train_iter", kill_in_epoch_two)
        with pytest.raises(Killed):
            run_cell(method, task, data_root=killed_on, log=lambda *_: None, **kw)
    started_at = []  # the epoch each training loop starts from (after any resume)
    original = EpochBasedTrainLoop.run

    def spy(self):
        started_at.append(self.epoch)
        return original(self)

    monkeypatch.setattr(EpochBasedTrainLoop, "run", spy)
    lines = []
    for root in reruns:
        logs = []
        run_cell(method, task, data_root=root, log=logs.append, **kw)
        lines.append(next(line for line in logs if line.startswith("[run] ")))
    return lines, started_at


def test_an_interrupted_finetuning_resumes_only_on_its_own_data(tmp_path, monkeypatch):
    a, b = _cifar_root(tmp_path, "a", 0), _cifar_root(tmp_path, "b", 1)
    opts = {"tasks.cifar100.pretrain.epochs": 1, "tasks.cifar100.finetune.epochs": 2,
            "tasks.cifar100.pretrain.global_batch_size": 32,
            "tasks.cifar100.finetune.global_batch_size": 32, "tasks.cifar100.loader.num_workers": 0}
    lines, started_at = _interrupt_then_rerun(tmp_path, monkeypatch, "part", "cifar100", a, (b, a),
                                              opts)
    assert lines[0].startswith("[run] starting cifar100"), lines   # other data: from the start
    assert lines[1].startswith("[run] resuming cifar100"), lines   # its own data: resumes
    # b: its own pretraining and a finetuning from epoch 0; a: cached pretraining, and
    # the killed finetuning continued after its finished first epoch
    assert started_at == [0, 0, 1]


def test_an_interrupted_detection_run_resumes_only_on_its_own_data(tmp_path, monkeypatch):
    from tasks.data.coco_synthetic import write_coco

    a = write_coco(tmp_path / "coco-a", 8, 4, size=96, seed=0)
    b = write_coco(tmp_path / "coco-b", 8, 4, size=96, seed=1)
    opts = {"tasks.coco.pretrain.epochs": 1, "tasks.coco.pretrain.global_batch_size": 16,
            "tasks.coco.pretrain.warmup_epochs": 0,
            "tasks.coco.pretrain_data.embedded.num_train": 32,
            "tasks.coco.pretrain_data.embedded.num_val": 20,
            "tasks.coco.finetune.epochs": 2, "tasks.coco.finetune.global_batch_size": 4,
            "tasks.coco.finetune.warmup_epochs": 0, "tasks.coco.finetune.test_batch_size": 4,
            "tasks.coco.loader.num_workers": 0, "tasks.coco.loader.log_interval": 1}
    lines, started_at = _interrupt_then_rerun(tmp_path, monkeypatch, "part", "coco", a, (b, a), opts)
    assert lines[0].startswith("[run] starting coco"), lines
    assert lines[1].startswith("[run] resuming coco"), lines
    # both roots pretrain on the same embedded scenes: one cached pretraining serves both
    assert started_at == [0, 1]


def test_a_long_variant_keeps_record_work_dir_and_lock_names_within_file_system_limits(tmp_path):
    """Eleven command-line options used to name a record past 255 bytes (OSError at the
    lock); a long variant keeps its start and a hash of the whole, so two variants that
    differ only at the end still get two records."""
    from pipeline.cell import cell_record_path, work_dir_of

    opts = {f"tasks.cifar100.{k}": v for k, v in {
        "pretrain.epochs": 3, "pretrain.warmup_epochs": 0.5, "pretrain.global_batch_size": 16,
        "pretrain.base_lr": 0.0003, "finetune.epochs": 2, "finetune.global_batch_size": 16,
        "finetune.base_lr": 0.0004, "finetune.drop_path": 0.0, "finetune.smoothing": 0.0,
        "loader.num_workers": 0, "loader.log_interval": 5}.items()}
    paths = [cell_record_path("part", "cifar100", out=tmp_path, cfg_options={**opts, **extra})
             for extra in ({}, {"tasks.cifar100.finetune.min_steps": 7})]
    assert paths[0] != paths[1]
    for path in paths:
        plan = make_plan("part", "cifar100", cfg_options=opts)
        work = work_dir_of(plan, path, data_identities(plan), tmp_path / "cache")
        for name in (path.name, work.name, f"{work.name}.lock"):
            assert len(name.encode()) <= 255, name
        assert path.name.startswith("part[finetune.base_lr=0.0004,") and "..." in path.name
        path.write_text("{}")  # the file system accepts it
