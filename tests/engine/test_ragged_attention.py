"""The per-generation attention of a batched decode step against a plain per-row attention.

`ragged._attend_shared` reads a generation's prefix KV once for all its rows and each row's own
suffix apart, with one softmax over both. Here each row is checked against PyTorch's own
`scaled_dot_product_attention` over the concatenation (prefix + that row's suffix), or the eager
soft-capped form, for the shapes the families bring: grouped-query heads, a head size that is
not a power of two, an empty prefix, one row, and suffixes that are views into a larger buffer
(as `BufferLayer` holds them)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from selfreward_vlm.service.engine.ragged import _attend_shared


def reference(q, pk, pv, sk, sv, scale, softcap):
    """Row by row: attention of its query over prefix + its own suffix."""
    rep = q.shape[1] // pk.shape[1]
    out = []
    for r in range(q.shape[0]):
        k = torch.cat([pk[0], sk[r]], dim=-2).repeat_interleave(rep, dim=0).double()
        v = torch.cat([pv[0], sv[r]], dim=-2).repeat_interleave(rep, dim=0).double()
        qr = q[r].double()  # (Hq, 1, D)
        if softcap is None:
            out.append(F.scaled_dot_product_attention(qr, k, v, scale=scale))
            continue
        s = (qr @ k.transpose(-1, -2)) * (scale if scale is not None else q.shape[-1] ** -0.5)
        out.append(torch.softmax(torch.tanh(s / softcap) * softcap, dim=-1) @ v)
    return torch.stack(out)


@pytest.mark.parametrize(
    ("hq", "hkv", "d", "rows", "prefix", "suffix"),
    [(12, 12, 64, 5, 620, 12), (8, 2, 32, 10, 33, 24), (6, 3, 80, 1, 7, 1), (4, 1, 16, 3, 0, 5)],
)
@pytest.mark.parametrize(("scale", "softcap"), [(None, None), (0.3, None), (None, 30.0)])
def test_shared_prefix_attention_equals_per_row_attention(
    hq, hkv, d, rows, prefix, suffix, scale, softcap
) -> None:
    g = torch.Generator().manual_seed(hq * 1000 + rows)
    q = torch.randn(rows, 1, hq, d, generator=g).transpose(1, 2)  # as the layers pass it
    pk, pv = (torch.randn(1, hkv, prefix, d, generator=g) for _ in range(2))
    buffers = [torch.randn(rows, hkv, suffix + 7, d, generator=g) for _ in range(2)]
    sk, sv = (b[:, :, :suffix] for b in buffers)  # the filled part of an in-place buffer
    got = _attend_shared(q, pk, pv, sk, sv, scale, softcap)
    assert got.shape == (rows, hq, 1, d) and got.dtype == q.dtype
    want = reference(q, pk, pv, sk, sv, scale, softcap)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_bf16_rows_with_softcap() -> None:
    """bf16 rows (soft-capped, as Gemma 2's are) keep their dtype and stay within bf16's
    precision of the float64 attention."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(5, 8, 1, 32, generator=g)
    pk, pv = (torch.randn(1, 2, 40, 32, generator=g) for _ in range(2))
    sk, sv = (torch.randn(5, 2, 6, 32, generator=g) for _ in range(2))
    args = [t.bfloat16() for t in (q, pk, pv, sk, sv)]
    got = _attend_shared(*args, None, 50.0)
    want = reference(*args, None, 50.0)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.double(), want, atol=2e-2, rtol=2e-2)
