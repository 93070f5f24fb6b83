"""distdiff.utils.meta_device: the live tensor bytes on the meta device, and the GPU's attention kernel there."""

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from distdiff.utils.meta_device import LiveTensorBytes, efficient_attention, gpu_attention


def test_live_tensor_bytes_counts_what_is_alive():
    tracker = LiveTensorBytes()
    with tracker:
        a = torch.zeros(1024, device="meta")  # 4 KiB
        b = a.view(32, 32)  # a view: no new storage
        c = torch.zeros(2048, device="meta")  # 8 KiB
        del c
        d = torch.zeros(512, device="meta")  # 2 KiB
    assert (tracker.peak, tracker.live) == (12 * 1024, 6 * 1024)
    del a, b, d
    assert tracker.live == 0


def test_gpu_attention_keeps_no_attention_matrix():
    """On the meta device the math path stores the [L, L] attention for the backward; the GPU's kernel does not."""
    q = torch.zeros(1, 8, 4096, 40, device="meta", dtype=torch.float16, requires_grad=True)
    peaks = []
    for context in (sdpa_kernel(SDPBackend.MATH), gpu_attention()):
        tracker = LiveTensorBytes()
        with tracker, context:
            out = F.scaled_dot_product_attention(q, q, q)
        assert out.shape == q.shape
        peaks.append(tracker.peak)
    matrix = 8 * 4096 * 4096 * 2  # one [H, L, L] attention in fp16
    assert peaks[0] > matrix > 50 * peaks[1]  # the kernel: its output [H, L, E] and a log-sum-exp per query
    assert F.scaled_dot_product_attention is not efficient_attention  # torch's own again
