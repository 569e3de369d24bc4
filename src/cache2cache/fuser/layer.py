"""The fuser for one receiver layer (C2C paper, Sec. 3.2): projection, per-head weights and a gate.

For the keys (and, with separate weights, the values) of one receiver layer:

    x      = [norm(sharer K at aligned positions) ; norm(receiver K)]      # (B, T, Ds + Dr)
    h      = blocks(W_in x)                                               # (B, T, hidden)
    delta  = W_out h  -> (B, Hr, T, dr)                                   # receiver KV shape
    w      = sigmoid(W_head h) -> (B, Hr, T, 1)                           # per token, per head
    K_new  = K_recv + gate * w * delta                                    # residual fusion

The gate is one learnable logit per layer for K and one for V: Gumbel-sigmoid with a temperature while
training, hard 0/1 at inference. A closed gate skips the layer entirely.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import FuserConfig


class FeedForwardBlock(nn.Module):
    """Pre-norm residual MLP block: x + W2 silu(W1 norm(x))."""

    def __init__(self, dim: int, mult: int) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(dim)
        self.up = nn.Linear(dim, dim * mult)
        self.down = nn.Linear(dim * mult, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.norm.weight.dtype)  # under autocast a Linear hands back bf16; the norm wants its own dtype
        return x + self.down(nn.functional.silu(self.up(self.norm(x))))


class KVProjector(nn.Module):
    """Projects concatenated sharer+receiver states of one kind (K or V) to a receiver-shaped delta."""

    def __init__(self, sharer_dim: int, receiver_heads: int, receiver_head_dim: int, cfg: FuserConfig) -> None:
        super().__init__()
        receiver_dim = receiver_heads * receiver_head_dim
        # Separate norms: the two models' K/V scales differ by orders of magnitude (Qwen keys have outliers).
        self.sharer_norm = nn.RMSNorm(sharer_dim)
        self.receiver_norm = nn.RMSNorm(receiver_dim)
        self.inp = nn.Linear(sharer_dim + receiver_dim, cfg.hidden_dim)
        self.blocks = nn.Sequential(*(FeedForwardBlock(cfg.hidden_dim, cfg.ffn_mult) for _ in range(cfg.num_blocks)))
        self.out_norm = nn.RMSNorm(cfg.hidden_dim)
        self.out = nn.Linear(cfg.hidden_dim, receiver_dim)
        self.head_weight = nn.Linear(cfg.hidden_dim, receiver_heads)
        self.heads, self.head_dim = receiver_heads, receiver_head_dim
        if cfg.zero_init:  # like LoRA's zero B: the untrained fuser leaves the receiver's cache unchanged
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, sharer: torch.Tensor, receiver: torch.Tensor) -> torch.Tensor:
        """sharer: (B, Hs, T, ds) aligned to receiver positions; receiver: (B, Hr, T, dr). Returns w * delta."""
        b, _, t, _ = receiver.shape
        xs = sharer.transpose(1, 2).reshape(b, t, -1)  # (B, T, Hs*ds)
        xr = receiver.transpose(1, 2).reshape(b, t, -1)  # (B, T, Hr*dr)
        h = self.blocks(self.inp(torch.cat([self.sharer_norm(xs), self.receiver_norm(xr)], dim=-1)))
        h = self.out_norm(h.to(self.out_norm.weight.dtype))
        delta = self.out(h).view(b, t, self.heads, self.head_dim)  # (B, T, Hr, dr)
        weight = torch.sigmoid(self.head_weight(h)).unsqueeze(-1)  # (B, T, Hr, 1)
        return (weight * delta).transpose(1, 2)  # (B, Hr, T, dr)


def gumbel_sigmoid(logit: torch.Tensor, temperature: float) -> torch.Tensor:
    """Relaxed Bernoulli sample: sigmoid((logit + logistic noise) / temperature)."""
    u = torch.rand_like(logit).clamp(1e-6, 1 - 1e-6)
    return torch.sigmoid((logit + torch.log(u) - torch.log1p(-u)) / temperature)


class LayerFuser(nn.Module):
    """Key and value projectors plus gates for one (receiver layer, sharer layer) pair."""

    def __init__(self, sharer_kv_dim: int, receiver_heads: int, receiver_head_dim: int, cfg: FuserConfig) -> None:
        super().__init__()
        self.key = KVProjector(sharer_kv_dim, receiver_heads, receiver_head_dim, cfg)
        self.value = KVProjector(sharer_kv_dim, receiver_heads, receiver_head_dim, cfg)
        self.gate_logit = nn.Parameter(torch.full((2,), float(cfg.gate_init)))  # [key, value]
        self.temperature = 1.0  # set by the trainer's annealing schedule; unused in eval mode

    def gates(self) -> torch.Tensor:
        """(2,) gate values for [key, value]: relaxed samples in training, hard 0/1 in eval."""
        if self.training:
            return gumbel_sigmoid(self.gate_logit, self.temperature)
        return (self.gate_logit > 0).to(self.gate_logit.dtype)

    def forward(
        self, rk: torch.Tensor, rv: torch.Tensor, sk: torch.Tensor, sv: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Deltas (dk, dv) to add to the receiver's (rk, rv), all (B, H, T, d) with the sharer already aligned;
        None where the gate is closed (nothing is computed for it)."""
        g = self.gates()
        dk = g[0] * self.key(sk, rk) if self.training or g[0] > 0 else None
        dv = g[1] * self.value(sv, rv) if self.training or g[1] > 0 else None
        return dk, dv
