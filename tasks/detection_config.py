"""The Mask R-CNN the COCO task trains: MMDetection's config dict, and the model built from it.

:func:`build_detector_cfg` writes MMDetection's ``MaskRCNN`` config with the suite's
:class:`tasks.vitdet.ViTDetBackbone` and ViTDet's simple feature pyramid; heads as in
ViTDet (two-conv RPN, 4conv1fc box head and 4-conv FCN mask head with LayerNorm; the
numbers of convs/fcs are plan values, smaller in ``tiny``). Every size comes from the
plan's ``detector`` and ``encoder`` sections. :func:`build_detector` builds it with every
weight initialised once.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from mmengine.config import ConfigDict
from mmengine.logging import MMLogger

from engine.plan import _Schedule
from methods.backbone import ENCODER_ARCHS

__all__ = ["DetectionFinetunePlan", "DetectorPlan", "build_detector_cfg", "build_detector"]


# ------------------------------------------------------------------------ plan sections
# the detection task's own sections of the run plan (``finetune`` and ``detector``)
@dataclass(frozen=True)
class DetectionFinetunePlan(_Schedule):
    """ViTDet's Mask R-CNN recipe (MMDetection's ViTDet project config): AdamW lr 1e-4
    at batch 64, betas (0.9, 0.999), wd 0.1, layer decay 0.7, large-scale jitter 0.1-2.0
    with pad 114; the step drops and warmup are fractions of training (its 100-epoch
    schedule: warmup 250, drops at 163889 and 177546 of 184375 iterations)."""
    epochs: int = 12
    global_batch_size: int = 64
    base_lr: float = 1e-4
    lr_reference_batch: int | None = 64
    weight_decay: float = 0.1
    betas: tuple = (0.9, 0.999)
    layer_decay: float | None = 0.7
    warmup_epochs: float = 12 * 250 / 184375
    lr_steps: tuple = (163889 / 184375, 177546 / 184375)
    resize_ratio: tuple = (0.1, 2.0)
    hflip: float = 0.5
    pad_val: int = 114
    min_size: int = 32
    test_batch_size: int = 1
    grad_clip: float | None = None
    pos_embed: bool = True
    grad_accum: int = 1
    recipe: str = "vitdet"


@dataclass(frozen=True)
class RpnTrainPlan:
    num: int = 256
    nms_pre: int = 2000
    max_per_img: int = 1000


@dataclass(frozen=True)
class RcnnTrainPlan:
    num: int = 512


@dataclass(frozen=True)
class RpnTestPlan:
    nms_pre: int = 1000
    max_per_img: int = 1000


@dataclass(frozen=True)
class RcnnTestPlan:
    score_thr: float = 0.05
    max_per_img: int = 100


@dataclass(frozen=True)
class DetectorPlan:
    """Mask R-CNN with the ViTDet backbone; defaults are ViTDet's ViT-B at 1024 px."""
    img_size: int = 1024
    window_size: int = 14
    global_blocks: tuple = (2, 5, 8, 11)
    drop_path: float = 0.1
    use_rel_pos: bool = True
    neck_channels: int = 256
    fc_channels: int = 1024
    bbox_convs: int = 4
    bbox_fcs: int = 1
    mask_convs: int = 4
    anchor_scale: int = 8
    scale_factors: tuple = (4.0, 2.0, 1.0, 0.5)
    roi_sampling_ratio: int = 0  # 0: adaptive, as ViTDet
    rpn_train: RpnTrainPlan = field(default_factory=RpnTrainPlan)
    rcnn_train: RcnnTrainPlan = field(default_factory=RcnnTrainPlan)
    rpn_test: RpnTestPlan = field(default_factory=RpnTestPlan)
    rcnn_test: RcnnTestPlan = field(default_factory=RcnnTestPlan)


# ------------------------------------------------------------------------ the model


def build_detector_cfg(det, encoder, num_classes: int, pos_embed: bool = True) -> dict:
    """MMDetection's Mask R-CNN config with the ViTDet backbone.

    ``det`` is the plan's :class:`DetectorPlan`, ``encoder`` its
    :class:`engine.plan.EncoderPlan` (the pretraining encoder: arch, img_size =
    pretraining size, patch_size).
    """
    ch = det.neck_channels
    patch = encoder.patch_size
    scales = tuple(det.scale_factors)
    strides = [int(patch / s) for s in scales]
    strides.append(strides[-1] * 2)  # the extra max-pooled level for the RPN
    norm = dict(type="PartLN2d", requires_grad=True)
    rpn_train, rcnn_train, rpn_test, rcnn_test = det.rpn_train, det.rcnn_train, det.rpn_test, det.rcnn_test
    # mmdet sends an RoI of side s to level floor(log2(s / finest_scale)); its 56 assumes
    # the finest level has stride 4 (FPN, ViTDet at 1024 px). Scale it with our finest
    # stride so an RoI meets the same feature resolution whatever the patch size.
    finest_scale = 56 * strides[0] / 4
    sampling = det.roi_sampling_ratio  # 0: adaptive, as ViTDet
    return dict(
        type="MaskRCNN",
        data_preprocessor=dict(type="DetDataPreprocessor", mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_mask=True,
                               pad_size_divisor=patch),
        backbone=dict(type="ViTDetBackbone", arch=encoder.arch, img_size=det.img_size,
                      patch_size=patch, pretrain_img_size=encoder.img_size,
                      in_chans=encoder.in_chans, window_size=det.window_size,
                      global_blocks=tuple(det.global_blocks), drop_path_rate=det.drop_path,
                      use_rel_pos=det.use_rel_pos, use_abs_pos=pos_embed),
        neck=dict(type="SimpleFeaturePyramid", in_channels=_embed_dim(encoder), out_channels=ch,
                  scale_factors=scales, num_outs=len(strides)),
        rpn_head=dict(
            type="RPNHead", in_channels=ch, feat_channels=ch, num_convs=2,
            anchor_generator=dict(type="AnchorGenerator", scales=[det.anchor_scale],
                                  ratios=[0.5, 1.0, 2.0], strides=strides),
            bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[1.0] * 4),
            loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
            loss_bbox=dict(type="L1Loss", loss_weight=1.0)),
        roi_head=dict(
            type="ValidBoxRoIHead",  # drops non-finite / empty boxes before mask pasting
            bbox_roi_extractor=dict(type="SingleRoIExtractor",
                                    roi_layer=dict(type="RoIAlign", output_size=7, sampling_ratio=sampling),
                                    out_channels=ch, featmap_strides=strides[:-1],
                                    finest_scale=finest_scale),
            bbox_head=dict(type="ConvFCBBoxHead", num_shared_convs=det.bbox_convs,
                           num_shared_fcs=det.bbox_fcs, in_channels=ch, conv_out_channels=ch,
                           fc_out_channels=det.fc_channels, roi_feat_size=7, num_classes=num_classes,
                           norm_cfg=norm,
                           bbox_coder=dict(type="FiniteDeltaXYWHBBoxCoder", target_means=[0.0] * 4,
                                           target_stds=[0.1, 0.1, 0.2, 0.2]),
                           reg_class_agnostic=False,
                           loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
                           loss_bbox=dict(type="L1Loss", loss_weight=1.0)),
            mask_roi_extractor=dict(type="SingleRoIExtractor",
                                    roi_layer=dict(type="RoIAlign", output_size=14, sampling_ratio=sampling),
                                    out_channels=ch, featmap_strides=strides[:-1],
                                    finest_scale=finest_scale),
            mask_head=dict(type="FCNMaskHead", num_convs=det.mask_convs, in_channels=ch, conv_out_channels=ch,
                           num_classes=num_classes, norm_cfg=norm,
                           loss_mask=dict(type="CrossEntropyLoss", use_mask=True, loss_weight=1.0))),
        train_cfg=dict(
            rpn=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.7, neg_iou_thr=0.3,
                                   min_pos_iou=0.3, match_low_quality=True, ignore_iof_thr=-1),
                     sampler=dict(type="RandomSampler", num=rpn_train.num, pos_fraction=0.5,
                                  neg_pos_ub=-1, add_gt_as_proposals=False),
                     allowed_border=-1, pos_weight=-1, debug=False),
            rpn_proposal=dict(nms_pre=rpn_train.nms_pre,
                              max_per_img=rpn_train.max_per_img,
                              nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
            rcnn=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.5,
                                    min_pos_iou=0.5, match_low_quality=True, ignore_iof_thr=-1),
                      sampler=dict(type="RandomSampler", num=rcnn_train.num,
                                   pos_fraction=0.25, neg_pos_ub=-1, add_gt_as_proposals=True),
                      mask_size=28, pos_weight=-1, debug=False)),
        test_cfg=dict(
            rpn=dict(nms_pre=rpn_test.nms_pre, max_per_img=rpn_test.max_per_img,
                     nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
            rcnn=dict(score_thr=rcnn_test.score_thr, nms=dict(type="nms", iou_threshold=0.5),
                      max_per_img=rcnn_test.max_per_img, mask_thr_binary=0.5)),
    )


def _embed_dim(encoder) -> int:
    return ENCODER_ARCHS[encoder.arch]["embed_dim"]


def build_detector(det, encoder, num_classes: int, pos_embed: bool = True):
    """The detector with every weight initialised once, here: the Runner's later
    ``init_weights()`` sees ``is_init`` and leaves loaded weights alone."""
    from . import detection_guards, vitdet  # noqa: F401  (register the suite's modules)
    from .detection_registry import mmdet_scope

    mmdet_scope()
    from mmdet.registry import MODELS

    model = MODELS.build(ConfigDict(build_detector_cfg(det, encoder, num_classes, pos_embed)))
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)  # mmengine logs one line per initialised tensor
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
    return model
