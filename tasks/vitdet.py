"""ViTDet's backbone and simple feature pyramid, as modules of MMDetection's registry.

MMDetection 3.x ships ViTDet only as a project outside its pip package, so the suite
has its own, registered in ``mmdet.registry.MODELS``:

- :class:`ViTDetBackbone`: a plain ViT whose parameter names are timm
  ``VisionTransformer``'s, so every method's ``encoder.pth`` maps onto it by name
  (:func:`tasks.checkpoint.load_encoder_into_backbone`). Its blocks
  (:class:`ViTDetBlock`) attend inside non-overlapping windows (``window_size``)
  except the ``global_blocks``, with ViTDet's decomposed relative position terms
  (initialised to zero); the absolute position embedding is kept at the pretraining
  grid and interpolated (bicubic) to the input's grid. Output: the last feature map,
  stride = patch size.
- :class:`SimpleFeaturePyramid`: ViTDet's pyramid from that single map: deconv x4,
  deconv x2, identity, max-pool -> 1x1 + 3x3 convs with LayerNorm2d to
  ``out_channels``, plus a stride-2 max-pool of the coarsest level for the RPN.
- ``PartLN2d`` (:class:`LayerNorm2d`): LayerNorm over channels of an NCHW map, usable
  as ``norm_cfg`` of mmdet's heads.

The layer-wise lr decay of a detector is ``rule="vitdet"`` of
:class:`engine.optim.LayerDecayOptimWrapperConstructor`.
The data pipeline's transforms are :mod:`tasks.data.coco_pipeline`, the test-time
guards :mod:`tasks.detection_guards`, the registration with mmdet
:mod:`tasks.detection_registry`.

Details: docs/reference/vitdet.md.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmdet.registry import MODELS
from mmengine.model import BaseModule
from timm.layers import DropPath, Mlp, PatchEmbed, resample_abs_pos_embed, trunc_normal_
from timm.models.vision_transformer import init_weights_vit_timm
from timm.models.vision_transformer_sam import Attention as SamAttention
from timm.models.vision_transformer_sam import window_partition, window_unpartition

from engine.errors import ConfigError
from methods.backbone import ENCODER_ARCHS

__all__ = ["ViTDetBackbone", "ViTDetBlock", "SimpleFeaturePyramid", "LayerNorm2d"]


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


# ----------------------------------------------------------------------- blocks
class ViTDetBlock(nn.Module):
    """A pre-norm transformer block on a ``(B, H, W, C)`` grid: timm's SAM ``Attention``
    (decomposed relative positions, inside windows of ``window_size`` or over the whole
    grid when 0) and timm's ``Mlp``, LayerNorms with eps 1e-6. Stochastic depth drops a
    whole image's branch after the windows are put back together, as detectron2's ViTDet
    block does; timm's SAM ``Block`` drops each window's branch on its own (before
    ``window_unpartition``), which is why the block is ours and its parts are timm's."""

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, drop_path=0.0,
                 window_size=0, use_rel_pos=True, grid=(14, 14)):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SamAttention(dim, num_heads=num_heads, qkv_bias=qkv_bias,
                                 use_rel_pos=use_rel_pos,
                                 input_size=grid if window_size == 0 else (window_size, window_size))
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
        # timm's patch embedding, any input size (the detector's inputs are padded to a
        # multiple of the patch), tokens as a (B, H, W, C) grid
        self.patch_embed = PatchEmbed(img_size=None, patch_size=patch_size, in_chans=in_chans,
                                      embed_dim=dim, output_fmt="NHWC")
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
        x = self.patch_embed(x)  # (B, H/P, W/P, C)
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
