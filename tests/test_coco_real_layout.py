"""COCO folders as real COCO writes them: what the reader and the evaluation do with
non-square images of other sizes than the detector's, grayscale JPEGs, images without
annotations, the three mask encodings and crowd regions. Expected values are computed
by hand from a folder of three images written here."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.coco import evaluate_predictions, summarise_metrics
from tasks.data.coco_pipeline import build_coco_dataset, eval_pipeline
from tasks.data.coco_synthetic import mask_polygons, uncompressed_rle
from tasks.detection_config import build_detector
from tasks.detection_guards import DroppedBoxesMetric, valid_boxes

SIZE = 96
# category ids 5 and 9 -> labels 0 and 1 (file order)
CATEGORIES = [dict(id=5, name="a", supercategory="x"), dict(id=9, name="b", supercategory="x")]
# (id, width, height, mode)
IMAGES = [(1, 120, 80, "RGB"), (2, 80, 120, "L"), (3, 100, 100, "RGB")]
# crowd region of image 1: x 0..40, y 50..80. Uncompressed RLE runs column by column
# (80 pixels each): 50 background, 30 crowd, for 40 columns, then 80 empty columns.
CROWD_COUNTS = [50] + [30, 50] * 39 + [30, 80 * 80]


def _rect(width, height, x0, y0, x1, y1):
    m = np.zeros((height, width), bool)
    m[y0:y1, x0:x1] = True
    return m


def _write_folder(root):
    """Image 1 (120x80, RGB): two objects of 'a' (a polygon, a compressed RLE), one
    crowd region of 'a' (uncompressed RLE, iscrowd 1), one 'b' (polygon). Image 2
    (80x120, grayscale JPEG): one 'b'. Image 3 (100x100): no annotation."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(_rect(120, 80, 60, 20, 90, 50).astype(np.uint8)))
    anns = [
        dict(id=1, image_id=1, category_id=5, bbox=[10, 10, 20, 20], area=400, iscrowd=0,
             segmentation=[[10, 10, 30, 10, 30, 30, 10, 30]]),
        dict(id=2, image_id=1, category_id=5, bbox=[60, 20, 30, 30], area=900, iscrowd=0,
             segmentation=dict(size=[80, 120], counts=rle["counts"].decode("ascii"))),
        dict(id=3, image_id=1, category_id=5, bbox=[0, 50, 40, 30], area=1200, iscrowd=1,
             segmentation=dict(size=[80, 120], counts=CROWD_COUNTS)),
        dict(id=4, image_id=1, category_id=9, bbox=[90, 40, 20, 20], area=400, iscrowd=0,
             segmentation=[[90, 40, 110, 40, 110, 60, 90, 60]]),
        dict(id=5, image_id=2, category_id=9, bbox=[20, 30, 30, 40], area=1200, iscrowd=0,
             segmentation=[[20, 30, 50, 30, 50, 70, 20, 70]]),
    ]
    rng = np.random.default_rng(0)
    (root / "annotations").mkdir(parents=True)
    for split in ("train", "val"):
        (root / f"{split}2017").mkdir()
        images = []
        for img_id, w, h, mode in IMAGES:
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            img = Image.fromarray(pixels)
            img = img.convert("L") if mode == "L" else img
            img.save(root / f"{split}2017" / f"{img_id:012d}.jpg", quality=90)
            images.append(dict(id=img_id, file_name=f"{img_id:012d}.jpg", width=w, height=h))
        blob = dict(images=images, annotations=anns, categories=CATEGORIES)
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(blob))
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _write_folder(tmp_path_factory.mktemp("coco-hand"))


@pytest.fixture(scope="module")
def detector():
    from pipeline.cell import make_plan

    plan = make_plan("part", "coco")
    torch.manual_seed(0)
    return build_detector(plan.detector, plan.encoder, num_classes=2).eval()


def test_mask_encodings_decode_to_the_hand_drawn_pixels(folder):
    from pycocotools import mask as mask_utils

    crowd = _rect(120, 80, 0, 50, 40, 80)
    assert uncompressed_rle(crowd) == dict(counts=CROWD_COUNTS, size=[80, 120])
    assert uncompressed_rle(np.array([[1, 0], [0, 0]], bool))["counts"] == [0, 1, 3]  # starts with 0 zeros
    decoded = mask_utils.decode(mask_utils.frPyObjects(dict(counts=CROWD_COUNTS, size=[80, 120]), 80, 120))
    assert np.array_equal(decoded.astype(bool), crowd)
    # one pixel at (x=2, y=1): the outline traced on the 2x mask, a quarter pixel inside its edges
    pixel = np.zeros((4, 5), bool)
    pixel[1, 2] = True
    assert mask_polygons(pixel) == [[2.25, 1.25, 2.25, 1.75, 2.75, 1.75, 2.75, 1.25]]
    ring = _rect(9, 9, 1, 1, 8, 8) & ~_rect(9, 9, 3, 3, 6, 6)
    assert mask_polygons(ring) is None  # a hole: no polygon list draws it
    two = _rect(12, 6, 1, 1, 4, 5) | _rect(12, 6, 7, 2, 11, 4)
    polys = mask_polygons(two)
    assert len(polys) == 2
    drawn = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, 6, 12))).astype(bool)
    assert np.array_equal(drawn, two)


def test_reader_keeps_empty_images_for_evaluation_and_crowds_out_of_training(folder):
    val = build_coco_dataset(folder, "val", eval_pipeline(SIZE))
    assert len(val) == 3  # the image without annotations is evaluated
    simple = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
              dict(type="PackDetInputs")]
    train = build_coco_dataset(folder, "train", simple)
    assert len(train) == 2  # ... and not trained on (filter_empty_gt)
    first = train[0]["data_samples"]
    assert first.img_id == 1
    assert first.gt_instances.bboxes.tensor.tolist() == [[10, 10, 30, 30], [60, 20, 90, 50],
                                                          [90, 40, 110, 60]]
    assert first.gt_instances.labels.tolist() == [0, 0, 1]
    assert [int(m.sum()) for m in first.gt_instances.masks.masks] == [400, 900, 400]
    assert first.ignored_instances.bboxes.tensor.tolist() == [[0, 50, 40, 80]]  # the crowd
    assert np.array_equal(first.ignored_instances.masks.masks[0].astype(bool), _rect(120, 80, 0, 50, 40, 80))


def test_eval_pipeline_records_the_shape_of_the_image_not_of_its_padding(folder):
    """The root cause of the mask-pasting crash: img_shape must be the resized image,
    the region boxes are clipped to, not the 96x96 padded input."""
    val = build_coco_dataset(folder, "val", eval_pipeline(SIZE))
    # keep_ratio: scale = 96 / longer side; 120x80 -> 96x64, 80x120 -> 64x96, 100x100 -> 96x96
    expected = {1: ((80, 120), (64, 96), 0.8), 2: ((120, 80), (96, 64), 0.8), 3: ((100, 100), (96, 96), 0.96)}
    for i in range(3):
        sample = val[i]
        meta = sample["data_samples"].metainfo
        ori, shape, scale = expected[meta["img_id"]]
        assert tuple(meta["ori_shape"]) == ori
        assert tuple(meta["img_shape"]) == shape
        assert meta["scale_factor"] == pytest.approx((scale, scale))
        assert tuple(sample["inputs"].shape) == (3, SIZE, SIZE)
        if meta["img_id"] == 2:  # the grayscale JPEG is read as three equal channels
            x = sample["inputs"]
            assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def _predict(model, folder):
    from mmengine.dataset import pseudo_collate

    val = build_coco_dataset(folder, "val", eval_pipeline(SIZE))
    with torch.no_grad():
        return model.test_step(pseudo_collate([val[i] for i in range(len(val))]))


def test_untrained_detector_predicts_only_inside_each_image(folder, detector):
    """An untrained detector scores boxes everywhere, the padding included; every one
    must come back inside its original image, masks at the image's size."""
    outputs = _predict(detector, folder)
    assert sum(len(o.pred_instances) for o in outputs) > 0
    for out in outputs:
        h, w = out.metainfo["ori_shape"]
        boxes = out.pred_instances.bboxes
        assert bool((boxes >= 0).all() and (boxes[:, [0, 2]] <= w + 1e-3).all()
                    and (boxes[:, [1, 3]] <= h + 1e-3).all()), (out.img_id, boxes.max(0).values)
        assert tuple(out.pred_instances.masks.shape[1:]) == (h, w)


def test_valid_boxes_by_hand():
    nan, inf = float("nan"), float("inf")
    boxes = torch.tensor([[0, 0, 10, 10], [5, 5, 5, 9], [3, 3, 2, 8], [nan, 0, 4, 4], [0, 0, inf, 4],
                          [1.0, 2.0, 1.5, 2.25]])
    assert valid_boxes(boxes).tolist() == [True, False, False, False, False, True]


def test_finite_coder_empties_only_non_finite_boxes():
    from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder

    from tasks.detection_guards import FiniteDeltaXYWHBBoxCoder

    stds = [0.1, 0.1, 0.2, 0.2]
    rois = torch.tensor([[10.0, 10, 30, 30], [40, 40, 60, 70], [0, 0, 8, 8]])
    deltas = torch.tensor([[0.1, -0.2, 0.3, 0.0], [float("nan"), 0, 0, 0], [0, 0, float("inf"), 0]])
    plain = DeltaXYWHBBoxCoder(target_stds=stds).decode(rois, deltas, max_shape=(64, 96))
    finite = FiniteDeltaXYWHBBoxCoder(target_stds=stds).decode(rois, deltas, max_shape=(64, 96))
    assert torch.equal(finite[0], plain[0])
    assert finite[1].tolist() == [0, 0, 0, 0] and not torch.isfinite(plain[1]).all()
    # an infinite log-size delta is clamped by the coder itself (wh_ratio_clip): finite
    assert torch.equal(finite[2], plain[2]) and torch.isfinite(plain[2]).all()


def test_non_finite_boxes_are_dropped_counted_and_the_rest_kept(folder, detector):
    """Class 0's box regression made NaN: its detections are dropped before the mask
    head and counted; class 1's detections are exactly what mmdet's StandardRoIHead
    predicts for them."""
    import copy

    from mmdet.models.roi_heads import StandardRoIHead
    from mmengine.dataset import pseudo_collate

    model = copy.deepcopy(detector)
    with torch.no_grad():
        model.roi_head.bbox_head.fc_reg.bias[:4] = float("nan")  # class 0's deltas
    val = build_coco_dataset(folder, "val", eval_pipeline(SIZE))
    batch = pseudo_collate([val[i] for i in range(len(val))])
    with torch.no_grad():
        data = model.data_preprocessor(batch, False)
        x = model.extract_feat(data["inputs"])
        proposals = model.rpn_head.predict(x, data["data_samples"], rescale=False)
        metas = [s.metainfo for s in data["data_samples"]]
        plain = StandardRoIHead.predict_bbox(model.roi_head, x, metas, copy.deepcopy(proposals),
                                             model.roi_head.test_cfg, rescale=False)
        outputs = model.test_step(batch)
    expected = [int((p.labels == 0).sum()) for p in plain]
    assert sum(expected) > 0
    assert [o.metainfo["dropped_pred_boxes"] for o in outputs] == expected
    for out, ref, meta in zip(outputs, plain, metas):
        inst = out.pred_instances
        assert (inst.labels == 1).all() and bool(valid_boxes(inst.bboxes).all())
        scale = inst.bboxes.new_tensor(meta["scale_factor"]).repeat(2)
        ones = ref.labels == 1
        assert torch.allclose(inst.bboxes, ref.bboxes[ones] / scale)
        assert torch.equal(inst.scores, ref.scores[ones])
    metric = DroppedBoxesMetric()
    metric.process({}, [o.to_dict() for o in outputs])
    assert summarise_metrics(metric.evaluate(size=len(outputs)))["dropped_pred_boxes"] == sum(expected)


def _prediction(img_id, shape, boxes, labels, scores):
    h, w = shape
    masks = torch.zeros(len(boxes), h, w, dtype=torch.bool)
    for m, (x0, y0, x1, y1) in zip(masks, boxes):
        m[y0:y1, x0:x1] = True  # every object here is a rectangle: its box filled
    return dict(img_id=img_id, ori_shape=(h, w),
                pred_instances=dict(bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                    scores=torch.tensor(scores, dtype=torch.float32),
                                    labels=torch.tensor(labels, dtype=torch.long), masks=masks))


def _perfect(extra_on=None, extra_box=None):
    """Every non-crowd object found (score 0.9); optionally one more detection of
    class 'a' with a higher score (0.95) on image ``extra_on``."""
    preds = {1: ([[10, 10, 30, 30], [60, 20, 90, 50], [90, 40, 110, 60]], [0, 0, 1], [0.9] * 3),
             2: ([[20, 30, 50, 70]], [1], [0.9]), 3: ([], [], [])}
    if extra_on is not None:
        boxes, labels, scores = preds[extra_on]
        preds[extra_on] = (boxes + [extra_box], labels + [0], scores + [0.95])
    shapes = {i: (h, w) for i, w, h, _ in IMAGES}
    return [_prediction(i, shapes[i], *preds[i]) for i in (1, 2, 3)]


def test_crowd_regions_are_ignored_and_images_without_annotations_are_scored(folder):
    ann = folder / "annotations" / "instances_val2017.json"
    perfect = evaluate_predictions(ann, _perfect())
    # the crowd region is not an object to find: finding every other one is 100
    assert perfect["bbox_mAP"] == pytest.approx(100.0) and perfect["segm_mAP"] == pytest.approx(100.0)
    # a detection inside the crowd region only (IoU with its box 100 / 1200, but it lies
    # wholly within the crowd), scored above every true one: pycocotools matches it to the
    # crowd and ignores it, neither TP nor FP
    crowd = evaluate_predictions(ann, _perfect(extra_on=1, extra_box=[5, 55, 15, 65]))
    assert crowd["bbox_mAP"] == pytest.approx(100.0) and crowd["segm_mAP"] == pytest.approx(100.0)
    # the same detection on the image without annotations is a false positive ranked
    # first in class 'a' (2 objects): precision 0, 1/2, 2/3 at recall 0, 1/2, 1, so its
    # interpolated precision is 2/3 at every recall; class 'b' stays 1 -> (2/3 + 1) / 2,
    # which CocoMetric rounds to 3 decimals: 0.833
    fp = evaluate_predictions(ann, _perfect(extra_on=3, extra_box=[5, 55, 15, 65]))
    for key in ("bbox_mAP", "bbox_mAP_50", "bbox_mAP_75", "segm_mAP"):
        assert fp[key] == pytest.approx(round((2 / 3 + 1) / 2, 3) * 100), key


def test_reader_check_accepts_real_layouts_and_rejects_bad_entries_with_one_line(folder, tmp_path):
    import shutil

    from engine.errors import DataError
    from tasks.data.coco import check_coco_annotations
    from tasks.data.coco_synthetic import write_coco

    for split in ("train", "val"):
        assert check_coco_annotations(folder, split) == ("a", "b")
    generated = write_coco(tmp_path / "gen", 4, 4, size=SIZE, seed=0, empty_fraction=0.25,
                           gray_fraction=0.25, crowd_fraction=0.5)
    assert len(check_coco_annotations(generated, "val")) == 10

    root = tmp_path / "bad"
    shutil.copytree(folder, root)
    ann_file = root / "annotations" / "instances_val2017.json"
    good = json.loads(ann_file.read_text())

    def broken(edit, match):
        blob = json.loads(json.dumps(good))
        edit(blob)
        ann_file.write_text(json.dumps(blob))
        with pytest.raises(DataError, match=match) as err:
            check_coco_annotations(root, "val")
        assert "\n" not in str(err.value)

    broken(lambda b: b["annotations"][0].update(segmentation=[10, 10, 30, 10, 30, 30]),
           "annotation 1: its segmentation is a list but not of polygons")
    broken(lambda b: b["annotations"][1]["segmentation"].update(size=[120, 80]),
           r"annotation 2: its segmentation is RLE of size \[120, 80\], but its image is .* \[80, 120\]")
    broken(lambda b: b["annotations"][4].pop("segmentation"), "annotation 5: its segmentation is missing")
    broken(lambda b: b["annotations"][4].update(image_id=7),
           "annotation 5 is of image 7, which the file does not list")
    broken(lambda b: b["annotations"][0].update(category_id=1), "annotation 1 has category 1")
    broken(lambda b: b["images"][2].update(file_name="gone.jpg"), "gone.jpg, which does not exist")
    broken(lambda b: b["images"][0].update(width=0), "image 1 needs file_name and a positive integer width")
    broken(lambda b: b.pop("annotations"), "cannot read .*KeyError: 'annotations'")
    ann_file.write_text(json.dumps(good))
    with pytest.raises(DataError, match="different categories"):
        check_coco_annotations(root, "val", classes=("a",))


def test_a_damaged_image_is_one_error_naming_it_and_a_whole_one_loads_as_mmcv_loads_it(folder, tmp_path):
    """The detection pipelines' loader: mmcv's pixels for whole files (an RGB and a
    grayscale JPEG); a file cut short, garbage or empty is a DataError naming it (the
    command prints it as its one line and stops)."""
    import io
    import re

    from mmcv.transforms import LoadImageFromFile

    from engine.errors import DataError
    from tasks.data.coco import image_damage
    from tasks.data.coco_pipeline import CheckedLoadImageFromFile

    for img_id, w, h, _ in IMAGES:
        path = str(folder / "train2017" / f"{img_id:012d}.jpg")
        ours = CheckedLoadImageFromFile().transform({"img_path": path})
        theirs = LoadImageFromFile().transform({"img_path": path})
        assert np.array_equal(ours["img"], theirs["img"]) and ours["img"].shape == (h, w, 3)
        assert ours["ori_shape"] == ours["img_shape"] == (h, w)
    jpeg = (folder / "train2017" / "000000000001.jpg").read_bytes()
    damaged = {"half.jpg": (jpeg[: len(jpeg) // 2], f"truncated at {len(jpeg) // 2} bytes"),
               "last_byte.jpg": (jpeg[:-1], f"truncated at {len(jpeg) - 1} bytes"),
               "garbage.jpg": (b"not an image at all", "cv2 cannot decode it"),
               "empty.jpg": (b"", "the file is empty")}
    for name, (data, why) in damaged.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(DataError, match=re.escape(f"cannot read image {path} (") + ".*" + re.escape(why)):
            CheckedLoadImageFromFile().transform({"img_path": str(path)})
    gone = tmp_path / "gone.jpg"
    with pytest.raises(DataError, match=re.escape(f"cannot read image {gone} (FileNotFoundError")):
        CheckedLoadImageFromFile().transform({"img_path": str(gone)})
    assert image_damage(jpeg + b"\x00" * 16) is None  # bytes after the end-of-image marker: whole
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    assert image_damage(png.getvalue()) is None
    assert "a PNG without its IEND chunk" in image_damage(png.getvalue()[:-4])
