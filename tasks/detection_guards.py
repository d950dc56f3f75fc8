"""Test-time guards: what keeps evaluating a detector, however early in training, from
failing on a predicted box.

- :class:`FiniteDeltaXYWHBBoxCoder` (``TASK_UTILS``) and :class:`ValidBoxRoIHead`
  (``MODELS``): a non-finite or empty predicted box is dropped before masks are pasted
  for it, and counted; :class:`DroppedBoxesMetric` sums the counts over the data set
  (``dropped_pred_boxes``).
- The eval pipeline's pad that keeps ``img_shape`` is
  :class:`tasks.data.coco_pipeline.PadKeepImageShape`.
"""
from __future__ import annotations

import torch
from mmdet.models.roi_heads import StandardRoIHead
from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder
from mmdet.registry import MODELS, TASK_UTILS
from mmdet.structures.bbox import get_box_tensor
from mmengine.evaluator import BaseMetric

__all__ = ["valid_boxes", "FiniteDeltaXYWHBBoxCoder", "ValidBoxRoIHead", "DroppedBoxesMetric"]


def valid_boxes(bboxes: torch.Tensor) -> torch.Tensor:
    """Which ``(N, 4)`` xyxy boxes have finite coordinates and positive width and height."""
    return (torch.isfinite(bboxes).all(dim=-1) & (bboxes[:, 2] > bboxes[:, 0])
            & (bboxes[:, 3] > bboxes[:, 1]))


@TASK_UTILS.register_module()
class FiniteDeltaXYWHBBoxCoder(DeltaXYWHBBoxCoder):
    """``DeltaXYWHBBoxCoder`` whose ``decode`` turns a box with a non-finite coordinate
    into the empty box (0, 0, 0, 0).

    The box head's NMS (mmcv's ``batched_nms``) separates classes by offsets scaled by
    the largest coordinate of all boxes, so one NaN box makes every box NaN and nothing
    is suppressed; an empty box overlaps nothing, and :class:`ValidBoxRoIHead` drops it
    after NMS. (The RPN needs no such guard: its ``min_bbox_size`` filter keeps only
    boxes with width and height > 0 before its NMS, which NaN fails.)
    """

    def decode(self, bboxes, pred_bboxes, max_shape=None, wh_ratio_clip=16 / 1000):
        decoded = super().decode(bboxes, pred_bboxes, max_shape, wh_ratio_clip)
        boxes = get_box_tensor(decoded)
        bad = ~torch.isfinite(boxes).all(dim=-1)
        if bad.any():
            boxes[bad] = 0.0  # in place: also the tensor inside a box-type result
        return decoded


@MODELS.register_module()
class ValidBoxRoIHead(StandardRoIHead):
    """``StandardRoIHead`` whose test path drops every detection whose box is
    non-finite or has no area (:func:`valid_boxes`) before the mask head pastes a mask
    for it, and records in each data sample's metainfo how many it dropped
    (``dropped_pred_boxes``). A detector early in training predicts such boxes; the
    benchmark must still score it, and the count says how often it happened."""

    def predict_bbox(self, x, batch_img_metas, rpn_results_list, rcnn_test_cfg, rescale=False):
        results_list = super().predict_bbox(x, batch_img_metas, rpn_results_list, rcnn_test_cfg,
                                            rescale)
        kept, self._dropped = [], []
        for results in results_list:
            keep = valid_boxes(get_box_tensor(results.bboxes))
            self._dropped.append(int((~keep).sum()))
            kept.append(results[keep])
        return kept

    def predict(self, x, rpn_results_list, batch_data_samples, rescale=False):
        results_list = super().predict(x, rpn_results_list, batch_data_samples, rescale)
        for sample, dropped in zip(batch_data_samples, self._dropped):
            sample.set_metainfo(dict(dropped_pred_boxes=dropped))
        return results_list


class DroppedBoxesMetric(BaseMetric):
    """The number of detections :class:`ValidBoxRoIHead` dropped over the evaluated
    images (``pred/dropped_pred_boxes``); the Evaluator gathers it from every rank."""

    default_prefix = "pred"

    def process(self, data_batch, data_samples) -> None:
        for sample in data_samples:
            self.results.append(int(sample.get("dropped_pred_boxes", 0)))

    def compute_metrics(self, results: list) -> dict:
        return {"dropped_pred_boxes": int(sum(results))}
