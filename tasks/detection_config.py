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

from mmengine.config import ConfigDict
from mmengine.logging import MMLogger

from methods.backbone import ENCODER_ARCHS

__all__ = ["build_detector_cfg", "build_detector"]


def build_detector_cfg(det, encoder, num_classes: int, pos_embed: bool = True) -> dict:
    """MMDetection's Mask R-CNN config with the ViTDet backbone.

    ``det`` is the plan's :class:`engine.plan.DetectorPlan`, ``encoder`` its
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
    from .vitdet import mmdet_scope

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
