"""Layers shared by the pretraining methods, one concern a file.

- :mod:`.sincos`:   fixed sin-cos position tables (timm's 2D table; 1D for signals)
- :mod:`.masking`:  random token subsets (MAE's and DropPos's patch masking)
- :mod:`.patchify`: grid patches as reconstruction targets, per-patch normalisation
- :mod:`.decoder`:  the light transformer decoder of MAE and DropPos, and its init
"""
from .decoder import build_decoder_blocks, init_linear_and_norm
from .masking import gather_tokens, num_kept, random_masking
from .patchify import normalize_patches, patchify
from .sincos import grid_sincos_pos_embed, set_fixed_sincos_pos_embed, sincos_pos_embed_1d

__all__ = ["build_decoder_blocks", "init_linear_and_norm", "gather_tokens", "num_kept",
           "random_masking", "normalize_patches", "patchify", "grid_sincos_pos_embed",
           "set_fixed_sincos_pos_embed", "sincos_pos_embed_1d"]
