"""Instruments for running a model on the meta device, where tensors have shapes and dtypes but no values.

A model built under `torch.device("meta")` runs its forward and backward in milliseconds at any size, so
its cost can be read before any weight is loaded: `torch.utils.flop_counter.FlopCounterMode` counts its
FLOPs, `LiveTensorBytes` its memory, and `gpu_attention` makes its attention the kernel a GPU would run.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

_TORCH_ATTENTION = F.scaled_dot_product_attention  # torch's own, which gpu_attention swaps out for a while


class LiveTensorBytes(TorchDispatchMode):
    """The bytes of tensor storages created while active and still alive, op by op, and their peak (`peak`).

    Every storage an op returns is counted once (a view shares its base's) until it is freed; tensors that
    existed before (a model's weights) are not counted. On the meta device this is the memory a run would hold,
    as the tensors' own bytes: an allocator's rounding and slack, and kernels' workspaces, are not in it.
    """

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes = WeakIdKeyDictionary()

    def _release(self, size: int) -> None:
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                storage = leaf.untyped_storage()
                if storage not in self._sizes:
                    size = storage.nbytes()
                    self._sizes[storage] = size
                    self.live += size
                    weakref.finalize(storage, self._release, size)
                    self.peak = max(self.peak, self.live)
        return out


def efficient_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask=None,
                        dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                        enable_gqa: bool = False) -> torch.Tensor:
    """F.scaled_dot_product_attention on q [B,H,L,E], k/v [B,H,S,E] as the memory-efficient kernel: [B,H,L,E].

    That kernel keeps no [L,S] attention matrix for the backward, only a log-sum-exp per query; with dropout or
    grouped-query heads, the plain call."""
    if dropout_p or enable_gqa:
        return _TORCH_ATTENTION(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                              is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
    if attn_mask is not None and attn_mask.dtype == torch.bool:  # the kernel takes an additive bias
        attn_mask = torch.zeros(attn_mask.shape, dtype=query.dtype, device=query.device).masked_fill(
            ~attn_mask, float("-inf"))
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    return torch.ops.aten._scaled_dot_product_efficient_attention(
        query, key, value, attn_mask, needs_grad, 0.0, is_causal, scale=scale)[0]


@contextmanager
def gpu_attention() -> Iterator[None]:
    """Within it, every F.scaled_dot_product_attention call is `efficient_attention`: what torch runs on a CUDA GPU.

    On the meta device (and on CPU) torch's attention falls back to the math path, which materialises the
    [L,S] attention matrix (in float32 for half inputs) and keeps it for the backward; a GPU's fused kernel
    does neither, so without this a meta run would overstate attention memory many times over. FlopCounterMode
    counts the kernel's FLOPs by its own formula: the forward's two matmuls, and the backward's five (it
    recomputes the attention instead of storing it). The module attribute is swapped, not a TorchFunctionMode
    used, because such a mode is not active in the backward, where gradient checkpointing recomputes the forward.
    """
    F.scaled_dot_product_attention = efficient_attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = _TORCH_ATTENTION
