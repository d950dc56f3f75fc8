"""Relative encoders: map patch embeddings X' (B, N, d) and index pairs S (B, M, 2) to
one prediction per pair (B, M, out_dim). Table 5 compares the three.

- :class:`CrossAttentionRelativeHead` (eq. 2-3, the method's head): the pair query
  ``Linear(concat(x'_i, x'_j))`` attends over all patch embeddings; a linear layer maps
  the result to ``out_dim``. Attention is a standard multi-head attention (q/k/v and
  output projections, 1 head by default), held in an ``nn.MultiheadAttention`` so the
  naive form below is PyTorch's own.
- :class:`MLPRelativeHead`: one linear map from all N patch embeddings concatenated to
  every pair's prediction (N*d -> N*N*out_dim), then the requested pairs are read out.
- :class:`PairwiseMLPHead`: ``Linear(concat(x'_i, x'_j))`` -> out_dim (weight sharing,
  no access to other patches).

Why the cross-attention head has a factored forward: everything before the softmax is
linear in (x'_i, x'_j), so a pair's attention logits over the N keys are
``L_ref[i] + L_tgt[j] + l_0`` with ``L_ref``/``L_tgt`` two N x N matrices per image and
head; and everything after the softmax is linear too, so the values can be taken to
``out_dim`` before the weighted sum. The result equals the naive gather-concat-attend
computation (`forward_naive`, kept as the reference in the tests) at a fraction of the
cost: nothing of size (M, d) is ever formed.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

__all__ = ["CrossAttentionRelativeHead", "MLPRelativeHead", "PairwiseMLPHead",
           "RELATIVE_HEADS", "build_relative_head", "gather_pairs"]


def gather_pairs(tokens: torch.Tensor, pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (B, N, d), pairs (B, M, 2) -> (x_ref, x_tgt), each (B, M, d)."""
    d = tokens.shape[-1]
    ref = torch.gather(tokens, 1, pairs[..., 0:1].expand(-1, -1, d))
    tgt = torch.gather(tokens, 1, pairs[..., 1:2].expand(-1, -1, d))
    return ref, tgt


class CrossAttentionRelativeHead(nn.Module):
    def __init__(self, dim: int, out_dim: int = 2, num_heads: int = 1):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.out_dim, self.num_heads = dim, out_dim, num_heads
        self.query = nn.Linear(2 * dim, dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.predict = nn.Linear(dim, out_dim)

    def forward_naive(self, tokens: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        """The literal eq. 2-3: gather, concat, project, attend, predict."""
        ref, tgt = gather_pairs(tokens, pairs)
        q = self.query(torch.cat([ref, tgt], dim=-1))
        out, _ = self.attn(q, tokens, tokens, need_weights=False)
        return self.predict(out)

    def forward(self, tokens: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        b, n, d = tokens.shape
        h, hd = self.num_heads, d // self.num_heads
        w_q, w_k, w_v = self.attn.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.attn.in_proj_bias.chunk(3)
        w_ref, w_tgt = self.query.weight[:, :d], self.query.weight[:, d:]
        scale = 1.0 / math.sqrt(hd)

        # Query = A x_ref + B x_tgt + c, folded through the query projection.
        a = (w_q @ w_ref) * scale                        # (d, d)
        bm = (w_q @ w_tgt) * scale
        c = (w_q @ self.query.bias + b_q) * scale       # (d,)
        keys = (tokens @ w_k.T + b_k).view(b, n, h, hd).transpose(1, 2)        # (B, H, N, hd)
        q_ref = (tokens @ a.T).view(b, n, h, hd).transpose(1, 2)
        q_tgt = (tokens @ bm.T).view(b, n, h, hd).transpose(1, 2)
        logits_ref = q_ref @ keys.transpose(-1, -2)                            # (B, H, N, N)
        logits_tgt = q_tgt @ keys.transpose(-1, -2)
        logits_0 = (keys @ c.view(h, hd, 1)).transpose(-1, -2)                  # (B, H, 1, N)

        # Values taken straight to out_dim: U_h = V_h (W_pred W_out,h)^T.
        w_out = self.attn.out_proj.weight                                      # (d, d)
        w_po = (self.predict.weight @ w_out).view(self.out_dim, h, hd)           # (o, H, hd)
        values = (tokens @ w_v.T + b_v).view(b, n, h, hd).transpose(1, 2)      # (B, H, N, hd)
        u = torch.einsum("bhnk,ohk->bhno", values, w_po)                       # (B, H, N, o)
        bias = self.predict.weight @ self.attn.out_proj.bias + self.predict.bias

        # Row look-ups (index_select) rather than element-wise gathers: a pair reads
        # one row of N logits per head from each matrix.
        m = pairs.shape[1]
        rows_ref = logits_ref.permute(0, 2, 1, 3).reshape(b * n, h * n)
        rows_tgt = logits_tgt.permute(0, 2, 1, 3).reshape(b * n, h * n)
        offset = (torch.arange(b, device=pairs.device) * n)[:, None]
        logits = (rows_ref.index_select(0, (pairs[..., 0] + offset).reshape(-1))
                  + rows_tgt.index_select(0, (pairs[..., 1] + offset).reshape(-1)))
        logits = logits.view(b, m, h, n) + logits_0.transpose(1, 2)            # (B, M, H, N)
        probs = logits.softmax(dim=-1)
        return torch.einsum("bmhn,bhno->bmo", probs, u) + bias                 # (B, M, o)


class MLPRelativeHead(nn.Module):
    """All patches in, all N*N pair predictions out (Table 5's "MLP")."""

    def __init__(self, dim: int, out_dim: int = 2, num_tokens: int = 64):
        super().__init__()
        self.num_tokens, self.out_dim = num_tokens, out_dim
        self.fc = nn.Linear(num_tokens * dim, num_tokens * num_tokens * out_dim)

    def forward(self, tokens: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        b, n, _ = tokens.shape
        if n != self.num_tokens:
            raise ValueError(f"MLP head built for {self.num_tokens} tokens, got {n}")
        all_pairs = self.fc(tokens.flatten(1)).view(b, n * n, self.out_dim)
        flat = pairs[..., 0] * n + pairs[..., 1]
        return torch.gather(all_pairs, 1, flat[..., None].expand(-1, -1, self.out_dim))


class PairwiseMLPHead(nn.Module):
    """Only the two patches of a pair in (Table 5's "pairwise MLP")."""

    def __init__(self, dim: int, out_dim: int = 2):
        super().__init__()
        self.fc = nn.Linear(2 * dim, out_dim)

    def forward(self, tokens: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
        ref, tgt = gather_pairs(tokens, pairs)
        return self.fc(torch.cat([ref, tgt], dim=-1))


RELATIVE_HEADS = {
    "cross_attention": CrossAttentionRelativeHead,
    "mlp": MLPRelativeHead,
    "pairwise_mlp": PairwiseMLPHead,
}


def build_relative_head(name: str, dim: int, out_dim: int, num_tokens: int,
                        num_heads: int = 1) -> nn.Module:
    if name not in RELATIVE_HEADS:
        raise ValueError(f"unknown relative head {name!r}; expected one of {sorted(RELATIVE_HEADS)}")
    # each head takes what it uses: the MLP sees all N tokens at once, cross-attention has heads
    extra = {"mlp": dict(num_tokens=num_tokens),
             "cross_attention": dict(num_heads=num_heads)}.get(name, {})
    return RELATIVE_HEADS[name](dim=dim, out_dim=out_dim, **extra)
