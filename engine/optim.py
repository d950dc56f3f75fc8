"""The optimizer's parameter groups: layer-wise lr decay and weight-decay exemptions.

One mmengine optimizer-wrapper constructor, :class:`LayerDecayOptimWrapperConstructor`,
builds the groups of every Runner in the suite; :func:`engine.runner.build_runner`
passes the rule (``param_rule``). Its ``paramwise_cfg`` holds ``layer_decay`` (1.0:
none) and ``rule``, one of :data:`RULES` (another raises ValueError), which says how
parameters map to layers and which are exempt from weight decay. Each group's lr is the
optimizer's lr times ``layer_decay ** (top layer - layer)``; mmengine's schedulers then
scale every group alike.

- ``rule="mae"`` (pretraining, every method): no layer decay; every 1-D parameter and
  every bias exempt from weight decay, everything else decayed; frozen parameters are
  left out;
- ``rule="timm"`` (the default: classification finetuning): the groups timm gives the
  model's ``encoder`` (layers from its ``group_matcher``; 1-D parameters and the
  encoder's ``no_weight_decay()`` exempt); parameters outside the encoder get the top
  layer's lr and the same 1-D rule;
- ``rule="vitdet"`` (the detector): ViTDet's layer ids over the whole detector
  (:data:`VITDET_LAYERS`: stem layer 0, block i layer i + 1, everything else the top
  layer) and ViTDet's exemptions (:data:`VITDET_NO_DECAY`: only the transformer
  blocks' norm layers and the absolute position embedding).

Details: docs/reference/optim.md.
"""
from __future__ import annotations

from mmengine.model import is_model_wrapper
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS, OPTIMIZERS
from timm.optim import param_groups_layer_decay, param_groups_weight_decay

__all__ = ["LayerDecayOptimWrapperConstructor", "RULES", "VITDET_LAYERS", "VITDET_NO_DECAY"]

RULES = ("mae", "timm", "vitdet")

# ViTDet's layer ids as a timm group matcher over a detector's parameter names: the stem
# is layer 0, block i layer i + 1; timm puts every parameter no pattern matches (pyramid,
# heads) in one layer above the last block.
VITDET_LAYERS = dict(stem=r"^backbone\.(?:patch_embed|pos_embed)",
                     blocks=[(r"^backbone\.blocks\.(\d+)\.", None)])
# ViTDet's weight-decay exemptions (fnmatch patterns, as timm's no_weight_decay_list).
VITDET_NO_DECAY = ("backbone.blocks.*.norm*", "*pos_embed*")


class _Matched:
    """A module's parameters under an explicit layer grouping: what timm's
    ``param_groups_layer_decay`` reads (``named_parameters`` and ``group_matcher``)."""

    def __init__(self, module, matcher: dict):
        self.module, self.matcher = module, matcher

    def named_parameters(self):
        return self.module.named_parameters()

    def group_matcher(self, coarse: bool = False) -> dict:
        return self.matcher


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LayerDecayOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """Parameter groups by ``paramwise_cfg``'s ``rule`` (``"timm"`` or ``"vitdet"``) and
    ``layer_decay``; see the module docstring."""

    def __call__(self, model):
        if is_model_wrapper(model):
            model = model.module
        optim_cfg = dict(self.optimizer_cfg)
        optim_cfg["params"] = self.param_groups(model, optim_cfg["lr"], optim_cfg.get("weight_decay", 0.0))
        optimizer = OPTIMIZERS.build(optim_cfg)
        wrapper_cfg = dict(self.optim_wrapper_cfg)
        wrapper_cfg.setdefault("type", "OptimWrapper")
        return OPTIM_WRAPPERS.build(wrapper_cfg, default_args=dict(optimizer=optimizer))

    def param_groups(self, model, lr: float, weight_decay: float) -> list[dict]:
        """The optimizer's groups: ``params``, ``lr`` and ``weight_decay`` each."""
        rule = self.paramwise_cfg.get("rule", "timm")
        decay = float(self.paramwise_cfg.get("layer_decay", 1.0))
        if rule == "mae":
            groups = [dict(g, lr_scale=1.0) for g in param_groups_weight_decay(model, weight_decay)]
        elif rule == "timm":
            encoder = model.encoder
            groups = param_groups_layer_decay(encoder, weight_decay=weight_decay, layer_decay=decay,
                                              no_weight_decay_list=encoder.no_weight_decay())
            covered = {id(p) for g in groups for p in g["params"]}
            rest = [p for p in model.parameters() if p.requires_grad and id(p) not in covered]
            for no_decay in (False, True):  # outside the encoder: the top layer, timm's 1-D rule
                params = [p for p in rest if (p.ndim <= 1) is no_decay]
                if params:
                    groups.append(dict(params=params, lr_scale=1.0,
                                       weight_decay=0.0 if no_decay else weight_decay))
        elif rule == "vitdet":
            groups = param_groups_layer_decay(_Matched(model, VITDET_LAYERS), weight_decay=weight_decay,
                                              layer_decay=decay, no_weight_decay_list=VITDET_NO_DECAY,
                                              weight_decay_exclude_1d=False)
        else:
            raise ValueError(f"unknown parameter-group rule {rule!r}; expected one of {RULES}")
        for g in groups:
            g["lr"] = lr * g.pop("lr_scale")
        return groups
