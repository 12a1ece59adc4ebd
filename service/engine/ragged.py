"""One decoder forward per step over the live rows of many generations (continuous batching).

Every generation keeps its own KV (`decoding.SharedPrefixRows`): its prefix state's KV, held
once for all its rows, plus an in-place buffer of each row's generated tokens; prefix lengths
differ from one generation to the next. A step stacks all generations' new tokens into one
batch: embeddings, projections, MLPs and the LM head run once over all rows, which is where the
weights are read, while attention runs per generation on that generation's own KV (a varlen
attention: no padding, no prefix KV copied into a shared slab or into each beam, and the
prefix read once per generation rather than once per row).

The attention is a function registered with transformers' `AttentionInterface` under
`RAGGED_ATTENTION`; the decoder's config names it for the duration of one step (the engine lock
is held), so the model's own layers, rotary embeddings and norms run unchanged. A custom name
makes transformers skip building a mask, which the per-generation attention does not need: a
row's one new token attends to all of its generation's KV (or the last `sliding_window` of it
in a sliding-window layer, as the model's own mask would allow).

A generation's rows get the same numbers here as alone, up to the last bits of a float: a GEMM
over more rows may block its sums differently (see the README's "Continuous batching").
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.cache_utils import DynamicLayer

from selfreward_vlm.service.engine.kvbuffer import BufferLayer

if TYPE_CHECKING:
    from selfreward_vlm.service.engine.decoding import Generation
    from selfreward_vlm.service.engine.lm import LanguageEngine

RAGGED_ATTENTION = "selfreward_ragged"

# The layers of the step being run (set by `decode_step` around its forward).
_step_layers: contextvars.ContextVar[list[RaggedLayer]] = contextvars.ContextVar("ragged")


KV = tuple[torch.Tensor, torch.Tensor]


class RaggedLayer(DynamicLayer):
    """One decoder layer's KV during a step: per generation, the rows of the batch that belong
    to it (`bounds`, contiguous), its buffer for this layer, and its shared prefix KV (None
    when the buffer holds each row's whole KV, prefix included)."""

    def __init__(
        self,
        buffers: Sequence[BufferLayer],
        prefixes: Sequence[KV | None],
        bounds: Sequence[tuple[int, int]],
    ):
        super().__init__()
        self.buffers, self.prefixes, self.bounds = buffers, prefixes, bounds
        self.is_initialized = True

    def update(  # type: ignore[override]
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append each generation's new keys/values (B, H, 1, D) to its own buffer."""
        for buf, (a, b) in zip(self.buffers, self.bounds, strict=True):
            buf.update(key_states[a:b], value_states[a:b])
        return key_states, value_states

    def get_seq_length(self) -> int:
        return max(
            buf.filled + (p[0].shape[-2] if p is not None else 0)
            for buf, p in zip(self.buffers, self.prefixes, strict=True)
        )


def ragged_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention of one new token per row over its own generation's KV.

    query: (B, Hq, 1, D); returns (B, 1, Hq, D) like transformers' attention functions."""
    layer = _step_layers.get()[module.layer_idx]  # type: ignore[index]
    outs = []
    for buf, prefix, (a, b) in zip(layer.buffers, layer.prefixes, layer.bounds, strict=True):
        k, v = buf.keys, buf.values  # (rows, Hkv, S, D), the new token included
        assert k is not None and v is not None
        if prefix is None:
            if sliding_window is not None:  # the model's mask: the last `sliding_window` keys
                k, v = k[:, :, -sliding_window:], v[:, :, -sliding_window:]
            outs.append(_attend(query[a:b], k, v, scaling, softcap))
            continue
        pk, pv = prefix
        if sliding_window is not None:
            k, v = k[:, :, -sliding_window:], v[:, :, -sliding_window:]
            keep = sliding_window - k.shape[-2]
            pk, pv = (
                (pk[:, :, -keep:], pv[:, :, -keep:]) if keep > 0 else (pk[:, :, :0], pv[:, :, :0])
            )
        outs.append(_attend_shared(query[a:b], pk, pv, k, v, scaling, softcap))
    out = torch.cat(outs) if len(outs) > 1 else outs[0]
    return out.transpose(1, 2).contiguous(), None


def _attend_shared(
    q: torch.Tensor,
    pk: torch.Tensor,
    pv: torch.Tensor,
    sk: torch.Tensor,
    sv: torch.Tensor,
    scaling: float | None,
    softcap: float | None,
) -> torch.Tensor:
    """Attention over a prefix shared by all rows plus each row's own suffix, with one softmax
    over both: the prefix keys/values are read once for all rows (a GEMM), not once per row.

    q: (R, Hq, 1, D); pk, pv: (1, Hkv, P, D); sk, sv: (R, Hkv, S, D) -> (R, Hq, 1, D).

    Written with 3-D `bmm`s and in-place scaling rather than `@` on 4-D tensors: the same
    kernels and numbers to the bit, a third fewer operator calls (this runs once per search and
    layer in every decode step, so its calls add up: README, "Measured: many searches at once")."""
    rows, hq, _, d = q.shape
    hkv, n_pre, n_suf = pk.shape[1], pk.shape[-2], sk.shape[-2]
    rep = hq // hkv  # head h reads kv head h // rep
    scale = scaling if scaling is not None else d**-0.5
    # prefix: (Hkv, R*rep, D) @ (Hkv, D, P) -> (Hkv, R*rep, P)
    qp = q.reshape(rows, hkv, rep, d).transpose(0, 1).reshape(hkv, rows * rep, d)
    s_pre = torch.bmm(qp, pk[0].transpose(1, 2)).mul_(scale)
    # suffix: (R*Hkv, rep, D) @ (R*Hkv, D, S) -> (R*Hkv, rep, S) -> (Hkv, R*rep, S)
    s_suf = torch.bmm(q.reshape(rows * hkv, rep, d), sk.flatten(0, 1).transpose(1, 2)).mul_(scale)
    s_suf = s_suf.view(rows, hkv, rep, n_suf).transpose(0, 1).reshape(hkv, rows * rep, n_suf)
    scores = torch.cat([s_pre, s_suf], dim=-1).float()
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    weights = torch.softmax(scores, dim=-1).to(q.dtype)
    out = torch.bmm(weights[..., :n_pre], pv[0])  # (Hkv, R*rep, D)
    w_suf = weights[..., n_pre:].reshape(hkv, rows, rep, n_suf).transpose(0, 1)
    out_suf = torch.bmm(w_suf.reshape(rows * hkv, rep, n_suf), sv.flatten(0, 1))  # (R*Hkv, rep, D)
    out = out.view(hkv, rows, rep, d).transpose(0, 1) + out_suf.view(rows, hkv, rep, d)
    return out.reshape(rows, hq, 1, d)


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float | None, softcap: float | None
) -> torch.Tensor:
    """(R, Hq, 1, D) x (R, Hkv, L, D) -> (R, Hq, 1, D); grouped-query heads share K/V."""
    if softcap is None:
        gqa = q.shape[1] != k.shape[1]
        return F.scaled_dot_product_attention(q, k, v, scale=scaling, enable_gqa=gqa)
    # Logit soft-capping (Gemma 2): not in SDPA, so the eager form.
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scale = scaling if scaling is not None else q.shape[-1] ** -0.5
    scores = torch.tanh((q @ k.transpose(-1, -2)) * scale / softcap) * softcap
    return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v


AttentionInterface.register(RAGGED_ATTENTION, ragged_attention)


@contextlib.contextmanager
def _ragged_config(engine: LanguageEngine, layers: list[RaggedLayer]) -> Iterator[None]:
    """The decoder's attention is `ragged_attention` for the body (engine lock held)."""
    config = engine.decoder.config
    before = config._attn_implementation
    config._attn_implementation = RAGGED_ATTENTION
    token = _step_layers.set(layers)
    try:
        yield
    finally:
        _step_layers.reset(token)
        config._attn_implementation = before


def decode_step(engine: LanguageEngine, gens: Sequence[Generation]) -> list[torch.Tensor]:
    """Run every generation's pending step in one forward; returns each one's next-token
    log-probs (rows, V), for its `advance`.

    All generations must be on the fast path (the caller holds the engine lock). On an
    exception no buffer holds a partial step: each buffer's fill is restored, so the step can
    be run again (e.g. split in halves, after an out-of-memory error)."""
    from selfreward_vlm.service.engine.decoding import _Rows

    dev = engine.device
    rows: list[_Rows] = []
    tokens: list[int] = []
    positions: list[int] = []
    names: list[str] = []
    bounds: list[tuple[int, int]] = []
    for gen in gens:
        assert gen.pending is not None and isinstance(gen.rows, _Rows)
        parents, toks = gen.pending
        gen.rows.reorder(parents)  # idempotent: a retried step finds the rows in order
        bounds.append((len(tokens), len(tokens) + len(toks)))
        tokens += toks
        positions += [gen.rows.position] * len(toks)
        names += [gen.item.adapter] * len(toks)
        rows.append(gen.rows)
    fills = [[layer.filled for layer in r.layers] for r in rows]
    prefixes = [getattr(r, "prefix_kv", None) for r in rows]  # SharedPrefixRows hold one
    layers = [
        RaggedLayer([r.layers[i] for r in rows], [p[i] if p else None for p in prefixes], bounds)
        for i in range(len(rows[0].layers))
    ]
    try:
        with engine.adapters.rows(names):
            embeds = engine.embed(torch.tensor(tokens, device=dev)[:, None])  # (B, 1, H)
            pos = torch.tensor(positions, device=dev)[:, None]
            with _ragged_config(engine, layers):
                hidden, _ = engine.run_decoder(embeds, None, None, pos, layers=layers)
            logp = engine.logprobs(hidden[:, -1])  # (B, V)
    except BaseException:
        for r, fill in zip(rows, fills, strict=True):
            for layer, n in zip(r.layers, fill, strict=True):
                layer.truncate(n)
        raise
    out = []
    for r, (a, b) in zip(rows, bounds, strict=True):
        r.advanced(b - a)
        out.append(logp[a:b])
    return out
