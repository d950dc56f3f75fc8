"""ViTDet's backbone and simple feature pyramid, as modules of MMDetection's registry.

MMDetection 3.x ships ViTDet only as a project outside its pip package, so the suite
has its own, registered in ``mmdet.registry.MODELS``:

- :class:`ViTDetBackbone`: a plain ViT whose parameter names are timm
  ``VisionTransformer``'s (``patch_embed.proj``, ``blocks.<i>.{norm1,attn.qkv,
  attn.proj,norm2,mlp.fc1,mlp.fc2}``, ``pos_embed``), so every method's
  ``encoder.pth`` maps onto it by name (:func:`tasks.checkpoint.load_encoder_into_backbone`,
  which logs every rule it applies). Blocks attend inside non-overlapping windows
  (``window_size``) except the ``global_blocks``; attention adds ViTDet's
  decomposed relative position terms (``attn.rel_pos_h``/``rel_pos_w``, new at
  finetuning, initialised to zero); the absolute position embedding is kept at the
  pretraining grid and interpolated (bicubic) to the input's grid; drop path.
  Output: the last feature map, stride = patch size.
- :class:`SimpleFeaturePyramid`: ViTDet's pyramid from that single map: deconv x4,
  deconv x2, identity, max-pool -> 1x1 + 3x3 convs with LayerNorm2d to
  ``out_channels``, plus a stride-2 max-pool of the coarsest level for the RPN.
- ``PartLN2d``: LayerNorm over channels of an NCHW map, usable as ``norm_cfg`` of
  mmdet's heads.

Windows and relative positions are timm's (``timm.models.vision_transformer_sam``):
``window_partition`` / ``window_unpartition`` (zero padding to a multiple of the window,
cropped after; the padded tokens take part in attention as keys, unmasked) and
``get_decomposed_rel_pos_bias``; they compute what detectron2's ViTDet functions
(``modeling/backbone/utils.py``) compute. :class:`RelPosAttention` passes that bias to
``F.scaled_dot_product_attention`` as its additive mask, as timm's SAM attention does on
its fused path.
The layer-wise lr decay of a detector is ``rule="vitdet"`` of
:class:`engine.optim.LayerDecayOptimWrapperConstructor`.

Data: :class:`CheckedLoadImageFromFile` (``TRANSFORMS``) loads an image as mmcv's
``LoadImageFromFile`` does (the same bytes, the same decoder), and a file that cannot be
read, is damaged (:func:`tasks.data.coco.image_damage`) or does not decode stops the run
with one :class:`engine.errors.DataError` naming it.

Test time (what keeps evaluation of any detector, however early in training, from
failing on a predicted box):

- :class:`PadKeepImageShape` (``TRANSFORMS``): the eval pipeline's fixed-size pad,
  leaving ``img_shape`` the shape of the image content, so predictions are clipped to
  the image and not to its padding.
- :class:`FiniteDeltaXYWHBBoxCoder` (``TASK_UTILS``) and :class:`ValidBoxRoIHead`
  (``MODELS``): a non-finite or empty predicted box is dropped before masks are pasted
  for it, and counted; :class:`DroppedBoxesMetric` sums the counts over the data set
  (``dropped_pred_boxes``).

:func:`mmdet_scope` registers mmdet's modules and these, and makes ``mmdet`` the default
registry scope: what every builder of the detector, its data and its metric calls first.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import mmcv
import numpy as np
from mmcv.transforms import LoadImageFromFile
from mmdet.datasets.transforms import Pad
from mmdet.models.roi_heads import StandardRoIHead
from mmdet.models.task_modules.coders import DeltaXYWHBBoxCoder
from mmdet.registry import MODELS, TASK_UTILS, TRANSFORMS
from mmdet.structures.bbox import get_box_tensor
from mmengine import fileio
from mmengine.evaluator import BaseMetric
from mmengine.model import BaseModule
from timm.layers import DropPath, Mlp, resample_abs_pos_embed, trunc_normal_
from timm.models.vision_transformer import init_weights_vit_timm
from timm.models.vision_transformer_sam import (get_decomposed_rel_pos_bias, window_partition,
                                                window_unpartition)

from engine.errors import ConfigError, DataError
from methods.backbone import ENCODER_ARCHS

from .data.coco import image_damage

__all__ = ["ViTDetBackbone", "SimpleFeaturePyramid", "LayerNorm2d", "RelPosAttention", "mmdet_scope",
           "CheckedLoadImageFromFile", "PadKeepImageShape", "FiniteDeltaXYWHBBoxCoder", "ValidBoxRoIHead",
           "DroppedBoxesMetric", "valid_boxes"]


def mmdet_scope() -> None:
    """Register mmdet's modules (this module's are registered when it is imported) and
    make ``mmdet`` the default scope."""
    import mmdet.models  # noqa: F401  (registers)
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)


@MODELS.register_module(name="PartLN2d")
class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of ``(B, C, H, W)``."""

    _abbr_ = "ln"

    def __init__(self, num_features: int, eps: float = 1e-6, **_ignored):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.eps = eps

    def forward(self, x):
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) * torch.rsqrt(var + self.eps)
        return x * self.weight[:, None, None] + self.bias[:, None, None]


# ----------------------------------------------------------------------- attention
class RelPosAttention(nn.Module):
    """Multi-head self-attention on a ``(B, H, W, C)`` grid with decomposed relative
    position terms: logit(q_i, k_j) = q_i . k_j / sqrt(d) + q_i . Rh[h_i - h_j + H - 1]
    + q_i . Rw[w_i - w_j + W - 1], the query unscaled in the relative terms. The terms
    are timm's ``get_decomposed_rel_pos_bias`` (tables of ``2 * grid - 1`` rows, resampled
    linearly to ``2 * H - 1`` / ``2 * W - 1`` when the input differs), passed to
    ``F.scaled_dot_product_attention`` as its additive mask, i.e. added to the scaled
    logits before the softmax."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True,
                 use_rel_pos: bool = True, grid: tuple[int, int] = (14, 14)):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid[0] - 1, self.head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid[1] - 1, self.head_dim))

    def forward(self, x):
        b, h, w, c = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, N, hd)
        bias = None
        if self.use_rel_pos:  # timm's takes (B * heads, N, head_dim) and returns (B * heads, N, N)
            bias = get_decomposed_rel_pos_bias(q.reshape(b * self.num_heads, h * w, self.head_dim),
                                               self.rel_pos_h, self.rel_pos_w, (h, w), (h, w))
            bias = bias.view(b, self.num_heads, h * w, h * w).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, c))


class ViTDetBlock(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, drop_path=0.0,
                 window_size=0, use_rel_pos=True, grid=(14, 14)):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RelPosAttention(dim, num_heads, qkv_bias, use_rel_pos,
                                    grid if window_size == 0 else (window_size, window_size))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)
        self.window_size = window_size

    def forward(self, x):
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            h, w = x.shape[1:3]
            x, padded = window_partition(x, self.window_size)
            x = window_unpartition(self.attn(x), self.window_size, (h, w), padded)
        else:
            x = self.attn(x)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class _PatchEmbed(nn.Module):
    def __init__(self, patch_size, in_chans, dim):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)


@MODELS.register_module()
class ViTDetBackbone(BaseModule):
    """See the module docstring. ``arch`` names a size of :data:`ENCODER_ARCHS`
    (any of embed_dim/depth/num_heads may be overridden)."""

    def __init__(self, arch: str = "vit_base", img_size: int = 1024, patch_size: int = 16,
                 pretrain_img_size: int = 224, in_chans: int = 3, window_size: int = 14,
                 global_blocks=(2, 5, 8, 11), drop_path_rate: float = 0.1, use_rel_pos: bool = True,
                 use_abs_pos: bool = True, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 init_cfg=None, **arch_overrides):
        super().__init__(init_cfg=init_cfg)
        if arch not in ENCODER_ARCHS:
            raise ConfigError(f"unknown encoder arch {arch!r}; expected one of {sorted(ENCODER_ARCHS)}")
        spec = {**ENCODER_ARCHS[arch], **arch_overrides}
        dim, depth, heads = spec["embed_dim"], spec["depth"], spec["num_heads"]
        bad = [i for i in global_blocks if not 0 <= i < depth]
        if bad:
            raise ConfigError(f"global_blocks {list(global_blocks)} out of range for depth {depth}")
        self.embed_dim, self.depth, self.patch_size = dim, depth, patch_size
        self.patch_embed = _PatchEmbed(patch_size, in_chans, dim)
        self.pretrain_grid = pretrain_img_size // patch_size
        self.pos_embed = (nn.Parameter(torch.zeros(1, self.pretrain_grid ** 2, dim))
                          if use_abs_pos else None)
        grid = img_size // patch_size
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.global_blocks = tuple(global_blocks)
        self.blocks = nn.ModuleList(
            ViTDetBlock(dim, heads, mlp_ratio, qkv_bias, dpr[i],
                        0 if i in self.global_blocks else window_size, use_rel_pos, (grid, grid))
            for i in range(depth))
        self._build_time_init()

    def _build_time_init(self):
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():  # timm's ViT scheme; LayerNorms are built at (1, 0)
            if isinstance(m, nn.Linear):
                init_weights_vit_timm(m)
        # relative position tables start at zero (parameters are created so)

    def init_weights(self):
        """Weights are set when the module is built (timm's scheme; zero relative
        position tables) and may then be overwritten by a pretrained encoder; the
        Runner's later ``init_weights`` call must not touch them."""
        self._is_init = True

    def abs_pos(self, h: int, w: int) -> torch.Tensor:
        g = self.pretrain_grid
        pe = resample_abs_pos_embed(self.pos_embed, [h, w], [g, g], num_prefix_tokens=0,
                                    antialias=False)
        return pe.reshape(1, h, w, -1)

    def forward(self, x):
        x = self.patch_embed.proj(x).permute(0, 2, 3, 1)  # (B, H/P, W/P, C)
        if self.pos_embed is not None:
            x = x + self.abs_pos(x.shape[1], x.shape[2])
        for blk in self.blocks:
            x = blk(x)
        return (x.permute(0, 3, 1, 2).contiguous(),)


@MODELS.register_module()
class SimpleFeaturePyramid(BaseModule):
    """ViTDet's simple pyramid (see the module docstring). Output strides are
    ``patch / scale`` for each scale factor, then one more level at twice the last
    stride when ``num_outs`` exceeds the number of scale factors."""

    def __init__(self, in_channels: int, out_channels: int = 256,
                 scale_factors=(4.0, 2.0, 1.0, 0.5), num_outs: int = 5, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.num_outs = num_outs
        self.stages = nn.ModuleList()
        for scale in scale_factors:
            dim = in_channels
            if scale == 4.0:
                layers = [nn.ConvTranspose2d(dim, dim // 2, 2, 2), LayerNorm2d(dim // 2), nn.GELU(),
                          nn.ConvTranspose2d(dim // 2, dim // 4, 2, 2)]
                dim //= 4
            elif scale == 2.0:
                layers, dim = [nn.ConvTranspose2d(dim, dim // 2, 2, 2)], dim // 2
            elif scale == 1.0:
                layers = []
            elif scale == 0.5:
                layers = [nn.MaxPool2d(2, 2)]
            else:
                raise ConfigError(f"scale factor {scale} not supported (4, 2, 1, 0.5)")
            layers += [nn.Conv2d(dim, out_channels, 1, bias=False), LayerNorm2d(out_channels),
                       nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                       LayerNorm2d(out_channels)]
            self.stages.append(nn.Sequential(*layers))

    def forward(self, inputs):
        x = inputs[-1]
        outs = [stage(x) for stage in self.stages]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return tuple(outs)


# ----------------------------------------------------------------------- data
@TRANSFORMS.register_module()
class CheckedLoadImageFromFile(LoadImageFromFile):
    """mmcv's ``LoadImageFromFile`` whose every failure is one :class:`DataError` naming
    the file: unreadable, damaged (:func:`tasks.data.coco.image_damage`), or not
    decodable (mmcv's own loader raises an ``AssertionError`` for that, or, for a
    truncated JPEG, may return the decoder's grey-filled rows). A damaged image stops
    the run rather than being skipped, as in the classification data sets
    (:func:`tasks.data.imagefolder.load_image`); a DataLoader worker's error reaches the
    command as the same one line."""

    def transform(self, results: dict) -> dict:
        path = results["img_path"]
        try:
            data = fileio.get(path, backend_args=self.backend_args)
        except OSError as exc:
            why = f"{type(exc).__name__}: {exc.strerror or exc}"
            raise DataError(f"cannot read image {path} ({why})") from None
        why = image_damage(data)
        img = None
        if why is None:
            try:
                img = mmcv.imfrombytes(data, flag=self.color_type, backend=self.imdecode_backend)
            except Exception as exc:  # noqa: BLE001 - any decoder error: the file is damaged
                why = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            if img is None and why is None:
                why = f"{self.imdecode_backend} cannot decode it"
        if why is not None:
            raise DataError(f"cannot read image {path} ({why}); replace the damaged file (or remove its "
                            f"entry from the annotation file) and rerun the same command")
        if self.to_float32:
            img = img.astype(np.float32)
        results["img"] = img
        results["img_shape"] = img.shape[:2]
        results["ori_shape"] = img.shape[:2]
        return results


# ----------------------------------------------------------------------- test time
@TRANSFORMS.register_module()
class PadKeepImageShape(Pad):
    """mmdet's ``Pad`` that leaves ``img_shape`` the shape of the image content.

    mmcv's ``Pad`` sets ``img_shape`` to the padded shape. At test time the box head
    clips predictions to ``img_shape`` and the mask head divides them by
    ``scale_factor`` to reach ``ori_shape``: with the padded shape, a box predicted in
    the padding of a non-square image lands beyond the original image's border, and
    pasting its mask fails (``torch.arange`` with a lower bound above the upper one).
    ``pad_shape`` still records the padded size.
    """

    def transform(self, results: dict) -> dict:
        content = tuple(results["img"].shape[:2])
        results = super().transform(results)
        results["img_shape"] = content
        return results


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
