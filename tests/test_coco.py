"""COCO detection task: data layout, ViTDet backbone, checkpoint mapping, evaluator,
and one Runner-driven training run of the tiny Mask R-CNN on CPU."""
import json
import math

import numpy as np
import pytest
import torch

from pipeline.presets import PRESETS
from engine.errors import ConfigError, DataError
from methods import build_method
from tasks import TASKS, build_task
from tasks.checkpoint import load_encoder_into_backbone
from tasks.coco import CocoTask, evaluate_predictions
from tasks.data.coco import check_coco_root, coco_classes
from tasks.data.coco_pipeline import build_coco_dataset, eval_pipeline, train_pipeline
from tasks.data.coco_synthetic import category_id, write_coco
from tasks.detection_config import build_detector
from tasks.vitdet import SimpleFeaturePyramid, ViTDetBackbone

SIZE = 96


def _plan(**kw):
    from pipeline.cell import make_plan

    return make_plan("part", "coco", **kw)


@pytest.fixture(scope="module")
def tiny():
    """The tiny preset's resolved coco sections, as the detector builders take them."""
    plan = _plan()
    return {"encoder": plan.encoder.as_kwargs(), "detector": plan.detector, "plan": plan}


# More images without annotations, grayscale images and crowds than the defaults, so
# that 8 + 6 images hold each kind (test_generated_folder_is_read_by_cocodataset checks)
VARIETY = dict(empty_fraction=0.25, gray_fraction=0.25, crowd_fraction=0.3)


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return write_coco(tmp_path_factory.mktemp("coco"), num_train=8, num_val=6, size=SIZE,
                      num_classes=10, seed=0, **VARIETY)


def decode_segmentation(seg, height, width) -> np.ndarray:
    """Any of COCO's three mask encodings -> bool (H, W), by pycocotools."""
    from pycocotools import mask as mask_utils

    if isinstance(seg, list):  # polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    elif isinstance(seg["counts"], list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(seg, height, width)
    else:
        rle = seg
    return mask_utils.decode(rle).astype(bool)


def test_registered():
    from mmdet.registry import MODELS

    assert "coco" in TASKS
    assert MODELS.get("ViTDetBackbone") is ViTDetBackbone
    assert MODELS.get("SimpleFeaturePyramid") is SimpleFeaturePyramid


def test_generated_folder_is_read_by_cocodataset(coco_root):
    ann = json.loads((coco_root / "annotations" / "instances_train2017.json").read_text())
    ids = [c["id"] for c in ann["categories"]]
    assert ids == [category_id(c) for c in range(10)] and ids != list(range(1, 11))
    assert all(a["area"] > 0 for a in ann["annotations"])
    # what real COCO has, in both splits: all three mask encodings (uncompressed RLE
    # exactly for the crowds), images without annotations, grayscale JPEGs, images
    # neither square nor of the detector's size
    from PIL import Image

    for split in ("train", "val"):
        blob = json.loads((coco_root / "annotations" / f"instances_{split}2017.json").read_text())
        segs = [(a["segmentation"], a["iscrowd"]) for a in blob["annotations"]]
        assert any(isinstance(s, list) for s, _ in segs)
        assert any(isinstance(s, dict) and isinstance(s["counts"], str) for s, _ in segs)
        assert all((isinstance(s, dict) and isinstance(s["counts"], list)) == bool(c) for s, c in segs)
        assert any(c for _, c in segs)
        annotated = {a["image_id"] for a in blob["annotations"]}
        assert any(img["id"] not in annotated for img in blob["images"])
        modes = [Image.open(coco_root / f"{split}2017" / img["file_name"]).mode for img in blob["images"]]
        assert "L" in modes and "RGB" in modes
        assert any(img["width"] != img["height"] for img in blob["images"])
    # deterministic
    again = write_coco(coco_root.parent / "again", 8, 6, SIZE, 10, seed=0, **VARIETY)
    assert (again / "annotations" / "instances_val2017.json").read_bytes() == \
        (coco_root / "annotations" / "instances_val2017.json").read_bytes()

    classes = coco_classes(coco_root / "annotations" / "instances_train2017.json")
    assert classes == tuple(c["name"] for c in ann["categories"])
    ds = build_coco_dataset(coco_root, "train", train_pipeline(SIZE, (0.8, 1.2)))
    assert ds.metainfo["classes"] == classes
    assert list(ds.cat_ids) == ids
    assert len(ds) == len({a["image_id"] for a in ann["annotations"]})
    sample = ds[0]
    inst = sample["data_samples"].gt_instances
    assert sample["inputs"].shape == (3, SIZE, SIZE)
    assert len(inst.bboxes) == len(inst.masks) == len(inst.labels) > 0
    assert int(inst.labels.max()) < 10 and int(inst.labels.min()) >= 0


def test_missing_root_and_wrong_layout(tmp_path, coco_root, tiny):
    with pytest.raises(DataError, match="train2017/, val2017/"):
        check_coco_root(tmp_path / "nowhere")
    (tmp_path / "bad" / "train2017").mkdir(parents=True)
    (tmp_path / "bad" / "val2017").mkdir()
    with pytest.raises(DataError, match="instances_train2017.json"):
        check_coco_root(tmp_path / "bad")
    task = build_task(_plan(data_root=tmp_path / "nowhere"), tmp_path)
    with pytest.raises(DataError):
        task.check_data()
    check_coco_root(coco_root)  # the generated layout passes


def _backbone(tiny, **kw):
    enc, det = tiny["encoder"], tiny["detector"]
    args = dict(arch=enc["arch"], img_size=det.img_size, patch_size=enc["patch_size"],
                pretrain_img_size=enc["img_size"], window_size=det.window_size,
                global_blocks=det.global_blocks, drop_path_rate=0.0)
    args.update(kw)
    return ViTDetBackbone(**args)


def test_pyramid_strides_on_non_square_input(tiny):
    backbone = _backbone(tiny).eval()
    p = tiny["encoder"]["patch_size"]
    neck = SimpleFeaturePyramid(backbone.embed_dim, 32).eval()
    x = torch.randn(2, 3, 5 * 16, 7 * 16)  # not a multiple of the window in tokens either
    (feat,) = backbone(x)
    assert feat.shape == (2, backbone.embed_dim, 80 // p, 112 // p)
    outs = neck((feat,))
    strides = [2, 4, 8, 16, 32]  # patch 8 / (4, 2, 1, 0.5), then the RPN's extra level
    assert [o.shape[1] for o in outs] == [32] * 5
    for o, s in zip(outs, strides):
        assert o.shape[-2:] == (math.ceil(80 / s), math.ceil(112 / s)), (o.shape, s)


def _save_encoder(tmp_path, method, enc):
    sd = build_method(method, encoder=enc).encoder_state_dict()
    path = tmp_path / f"{method}.pth"
    torch.save(dict(state_dict=sd), path)
    return path, sd


@pytest.mark.parametrize("method", ["part", "mae"])
def test_checkpoint_mapping_loads_every_transferable_weight(tmp_path, tiny, method):
    path, sd = _save_encoder(tmp_path, method, tiny["encoder"])
    backbone = _backbone(tiny)
    lines = []
    report = load_encoder_into_backbone(backbone, path, log=lines.append)
    rel = sorted(f"blocks.{i}.attn.rel_pos_{a}" for i in range(backbone.depth) for a in "hw")
    assert report["unexpected"] == []
    assert report["dropped"] == ["cls_token", "norm.bias", "norm.weight"]
    own = backbone.state_dict()
    transferable = [k for k in sd if k.startswith(("patch_embed.", "blocks."))]
    assert set(transferable) <= set(report["mapped"])
    for k in transferable:
        assert torch.equal(own[k], sd[k]), k
    if method == "part":  # PART pretrains without position embeddings
        assert report["missing"] == sorted(rel + ["pos_embed"])
        assert any("no pos_embed" in line and "freshly initialised" in line for line in lines)
    else:  # MAE's fixed sin-cos table, without its [CLS] entry
        assert report["missing"] == rel
        assert torch.equal(own["pos_embed"], sd["pos_embed"][:, 1:])
    assert all(float(own[k].abs().max()) == 0.0 for k in rel)  # zero-initialised
    assert any("dropped" in line for line in lines)


def test_foreign_or_missing_checkpoint_is_a_clear_error(tmp_path, tiny):
    backbone = _backbone(tiny)
    with pytest.raises(DataError, match="not found"):
        load_encoder_into_backbone(backbone, tmp_path / "none.pth", log=lambda *_: None)
    torch.save(dict(state_dict={"layer1.0.conv1.weight": torch.zeros(3)}), tmp_path / "resnet.pth")
    with pytest.raises(ConfigError, match="layer1.0.conv1.weight"):
        load_encoder_into_backbone(backbone, tmp_path / "resnet.pth", log=lambda *_: None)
    wide = dict(tiny["encoder"], arch="vit_tiny")  # another width/depth
    path, _ = _save_encoder(tmp_path, "mae", wide)
    with pytest.raises(ConfigError):
        load_encoder_into_backbone(backbone, path, log=lambda *_: None)


def test_runner_init_keeps_loaded_weights(tmp_path, tiny):
    path, sd = _save_encoder(tmp_path, "mae", tiny["encoder"])
    model = build_detector(tiny["detector"], tiny["plan"].encoder, num_classes=10)
    load_encoder_into_backbone(model.backbone, path, log=lambda *_: None)
    model.init_weights()  # what the Runner does before training
    assert torch.equal(model.backbone.blocks[0].attn.qkv.weight, sd["blocks.0.attn.qkv.weight"])


def _ground_truth_predictions(root):
    """One prediction per non-crowd annotation (crowd regions are not objects to find)."""
    ann = json.loads((root / "annotations" / "instances_val2017.json").read_text())
    label_of = {c["id"]: i for i, c in enumerate(ann["categories"])}
    preds = []
    for img in ann["images"]:
        objs = [a for a in ann["annotations"] if a["image_id"] == img["id"] and not a["iscrowd"]]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                               a["bbox"][1] + a["bbox"][3]] for a in objs], dtype=torch.float32).reshape(-1, 4)
        masks = np.stack([decode_segmentation(a["segmentation"], img["height"], img["width"])
                          for a in objs]) if objs else np.zeros((0, img["height"], img["width"]), bool)
        preds.append(dict(img_id=img["id"], ori_shape=(img["height"], img["width"]),
                          pred_instances=dict(bboxes=boxes, scores=torch.ones(len(objs)),
                                              labels=torch.tensor([label_of[a["category_id"]] for a in objs]),
                                              masks=torch.from_numpy(masks))))
    return preds


def test_evaluator_perfect_and_empty_predictions(coco_root):
    ann_file = coco_root / "annotations" / "instances_val2017.json"
    perfect = evaluate_predictions(ann_file, _ground_truth_predictions(coco_root))
    assert perfect["bbox_mAP"] == pytest.approx(100.0)
    assert perfect["bbox_mAP_50"] == pytest.approx(100.0)
    assert perfect["bbox_mAP_75"] == pytest.approx(100.0)
    assert perfect["segm_mAP"] == pytest.approx(100.0)
    empty = []
    for p in _ground_truth_predictions(coco_root):
        p["pred_instances"] = dict(bboxes=torch.zeros(0, 4), scores=torch.zeros(0),
                                   labels=torch.zeros(0, dtype=torch.long),
                                   masks=torch.zeros(0, *p["ori_shape"], dtype=torch.bool))
        empty.append(p)
    none = evaluate_predictions(ann_file, empty)
    assert none["bbox_mAP"] == 0.0 and none["bbox_mAP_50"] == 0.0 and none["segm_mAP"] == 0.0


def test_one_training_iteration_on_cpu(coco_root, tiny):
    from mmengine.dataset import pseudo_collate
    from mmengine.optim import OptimWrapper

    torch.manual_seed(0)
    model = build_detector(tiny["detector"], tiny["plan"].encoder, num_classes=10)
    ds = build_coco_dataset(coco_root, "train", train_pipeline(SIZE, (0.8, 1.2)))
    batch = pseudo_collate([ds[i] for i in range(2)])
    before = model.backbone.blocks[0].attn.qkv.weight.detach().clone()
    optim = OptimWrapper(torch.optim.AdamW(model.parameters(), lr=1e-4))
    model.train()
    log = model.train_step(batch, optim)
    assert math.isfinite(float(log["loss"].detach())) and float(log["loss"].detach()) > 0
    for key in ("loss_rpn_cls", "loss_cls", "loss_bbox", "loss_mask"):
        assert key in log
    assert not torch.equal(before, model.backbone.blocks[0].attn.qkv.weight)
    model.eval()
    val = build_coco_dataset(coco_root, "val", eval_pipeline(SIZE))
    out = model.test_step(pseudo_collate([val[0]]))
    assert out[0].pred_instances.bboxes.shape[1] == 4


def test_task_run_through_the_runner(tmp_path, coco_root, tiny):
    """The task's own path: Runner (mmdet scope, layer decay, step schedule), a
    pretrained MAE encoder loaded by the mapping, CocoMetric at the end, on a folder
    with every kind of image and mask real COCO has (non-square images of other sizes
    than the detector's, whose padding the untrained detector predicts boxes in)."""
    plan = _plan(data_root=coco_root, cfg_options={
        "tasks.coco.finetune.epochs": 1, "tasks.coco.finetune.global_batch_size": 4,
        "tasks.coco.finetune.test_batch_size": 2, "tasks.coco.loader.num_workers": 0,
        "tasks.coco.loader.log_interval": 1})
    task = CocoTask(plan, tmp_path)
    folder = tmp_path / "pre"
    folder.mkdir()
    path, _ = _save_encoder(tmp_path, "mae", tiny["encoder"])
    path.rename(folder / "encoder.pth")
    metrics = task.run(pretrained=folder, work_dir=tmp_path / "work", log=lambda *_: None)
    for key in ("bbox_mAP", "bbox_mAP_50", "bbox_mAP_75", "segm_mAP"):
        assert 0.0 <= metrics[key] <= 100.0
    assert isinstance(metrics["dropped_pred_boxes"], int) and metrics["dropped_pred_boxes"] >= 0
    assert metrics["new_keys"] == sorted(f"blocks.{i}.attn.rel_pos_{a}" for i in range(4) for a in "hw")


def test_table2_cells_come_from_recorded_runs(tmp_path):
    """``make table2``'s code path (pretraining, detector, records, table) end to end,
    on a preset file that inherits tiny and shrinks only sizes and epochs."""
    from benchmarks.tables import TABLES, fill

    preset = tmp_path / "table2check.py"
    preset.write_text(
        f'_base_ = ["{(PRESETS / "tiny.py").as_posix()}"]\n'
        'preset = "table2check"\n'
        'tasks = dict(coco=dict(\n'
        '    pretrain=dict(epochs=1, global_batch_size=16, warmup_epochs=0),\n'
        '    pretrain_data=dict(embedded=dict(num_train=40, num_val=10)),\n'
        '    finetune=dict(epochs=1, global_batch_size=4, warmup_epochs=0, test_batch_size=4),\n'
        '    loader=dict(num_workers=0, log_interval=1),\n'
        '    data=dict(embedded=dict(num_train=8, num_val=4))))\n')
    csv = fill("table2", str(preset), seeds=1, run=True, cache=tmp_path / "cache", out_root=tmp_path)
    import pandas as pd

    df = pd.read_csv(csv).set_index("row")
    paper = pd.read_csv("paper_numbers/table2.csv").set_index("row")
    runs = sorted((tmp_path / "runs").glob("*.json"))
    assert [p.name for p in runs] == sorted(f"{r.method}__coco__seed0.json" for r in TABLES["table2"].rows)
    for path in runs:
        rec = json.loads(path.read_text())
        label = next(r.label for r in TABLES["table2"].rows if r.method == rec["method"])
        assert rec["preset"] == "table2check" and rec["task"] == "coco"
        assert rec["wall_time_s"]["pretrain"] > 0 and rec["wall_time_s"]["task"] > 0
        for col, metric in (("AP^b", "bbox_mAP"), ("AP^b_50", "bbox_mAP_50"), ("AP^b_75", "bbox_mAP_75")):
            assert df.loc[label, f"{col} (ours)"] == pytest.approx(rec["metrics"][metric])
            assert df.loc[label, f"{col} (ours, n)"] == 1
            assert df.loc[label, f"{col} (paper)"] == pytest.approx(paper.loc[label, metric])
    md = (tmp_path / "table2.md").read_text()
    assert "| PART |" in md and "42.4" in md


def test_paper_schedule_is_vitdets_scaled_to_12_epochs():
    """The paper preset's 1x on 8 GPUs, global batch 64, COCO train2017 with empty images
    filtered (117,266): hand-computed iterations, warmup and lr drops."""
    from engine.plan import iters_per_epoch
    from engine.runner import lr_schedule

    plan = _plan(preset="paper", world_size=8)
    ft = plan.finetune
    assert (ft.global_batch_size, plan.finetune_batch()) == (64, 8)
    iters = iters_per_epoch(117266, plan.finetune_batch(), 8)
    sched = lr_schedule(iters, ft)
    # each rank reads ceil(117266 / 8) = 14659 images, 1832 full batches of 8 (the last
    # partial one dropped); 12 epochs = 21984 iterations (ViTDet's 100 epochs are 184375
    # at batch 64); warmup 250 of 184375 -> 21984 * 250 / 184375 = 29.8 -> 30; drops at
    # 163889 / 184375 and 177546 / 184375 of 21984 = 19541.3 and 21169.7.
    assert iters == 1832
    assert sched == [
        dict(type="LinearLR", start_factor=1e-3, by_epoch=False, begin=0, end=30),
        dict(type="MultiStepLR", by_epoch=False, begin=0, end=21984, milestones=[19541, 21170],
             gamma=0.1)]
    assert (ft.lr, ft.weight_decay, ft.layer_decay, ft.resize_ratio) == (1e-4, 0.1, 0.7, (0.1, 2.0))


def test_corrupt_or_mismatched_annotations_fail_before_pretraining(tmp_path, coco_root, tiny):
    import shutil

    root = tmp_path / "coco"
    shutil.copytree(coco_root, root)
    ann = root / "annotations" / "instances_train2017.json"
    good = ann.read_text()
    task = CocoTask(_plan(data_root=root), tmp_path / "cache")
    ann.write_text(good[:300])  # truncated download
    with pytest.raises(DataError, match="instances_train2017.json: JSONDecodeError"):
        task.check_data()
    with pytest.raises(DataError, match="cannot load COCO train annotations"):
        build_coco_dataset(root, "train", train_pipeline(SIZE), task.classes)
    data = json.loads(good)
    data["categories"] = data["categories"][:-1]
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match="different categories"):
        task.check_data()


def test_abs_pos_embed_is_the_pretraining_grid_resized_bicubically(tiny):
    backbone = _backbone(tiny)
    g = backbone.pretrain_grid
    table = backbone.pos_embed.detach().reshape(1, g, g, -1)
    assert torch.equal(backbone.abs_pos(g, g), table)
    naive = torch.nn.functional.interpolate(table.permute(0, 3, 1, 2), size=(5, 11), mode="bicubic",
                                            align_corners=False).permute(0, 2, 3, 1)
    assert torch.allclose(backbone.abs_pos(5, 11).detach(), naive, atol=1e-6)
