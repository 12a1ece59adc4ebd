"""Scoring continuation rows after cached prefix states: one padded forward for rows after
different states (left-padded KV, explicit positions incl. each state's rope delta), or one
forward per state where padding costs more than it saves (CPU)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from selfreward_vlm.core.schemas import Usage
from selfreward_vlm.service.engine.cache import PrefixState

if TYPE_CHECKING:
    from selfreward_vlm.service.engine.lm import LanguageEngine


@dataclass
class ScoredTokens:
    token_ids: list[int]
    token_logprobs: list[float]


def score_grouped(
    engine: LanguageEngine, rows: list[tuple[PrefixState, list[int], Usage]]
) -> list[ScoredTokens]:
    """One padded forward for all rows, or (cross-prefix batching off) one forward per
    distinct prefix state: on a CPU the padded batch costs more than it saves."""
    if engine.cross_prefix_batching:
        return score_rows(engine, rows)
    groups: dict[int, list[int]] = {}
    for i, (state, _, _) in enumerate(rows):
        groups.setdefault(id(state), []).append(i)
    out: list[ScoredTokens | None] = [None] * len(rows)
    for idx in groups.values():
        for i, res in zip(idx, score_rows(engine, [rows[i] for i in idx]), strict=True):
            out[i] = res
    return out  # type: ignore[return-value]


def score_rows(
    engine: LanguageEngine, rows: Sequence[tuple[PrefixState, list[int], Usage]]
) -> list[ScoredTokens]:
    """Score continuation rows, each after its own prefix state, in one padded forward.

    Prefix KVs of different lengths are left-padded with masked zeros; continuations are
    right-padded. Position ids are explicit, so padding never shifts a real token.
    """
    results = [ScoredTokens(c, []) for _, c, _ in rows]
    width = max(len(c) for _, c, _ in rows)
    for (state, cont, usage), res in zip(rows, results, strict=True):
        if cont:
            res.token_logprobs.append(float(state.next_logprobs[cont[0]]))
        usage.tokens_scored += len(cont)
    if width <= 1:
        return results
    past, mask = batch_past(engine, [s for s, _, _ in rows], width)
    ids = torch.full((len(rows), width), engine.pad_token_id, device=engine.device)
    pos = torch.zeros((len(rows), width), dtype=torch.long, device=engine.device)
    for i, (state, cont, usage) in enumerate(rows):
        ids[i, : len(cont)] = torch.tensor(cont, device=engine.device)
        mask[i, -width : -width + len(cont) or None] = 1
        start = state.length + state.rope_delta
        pos[i] = torch.arange(start, start + width, device=engine.device)
        usage.tokens_forwarded += max(len(cont) - 1, 0)
    hidden, _ = engine.run_decoder(engine.embed(ids[:, :-1]), past, mask[:, :-1], pos[:, :-1])
    logp = engine.logprobs(hidden)  # (B, width-1, V): predicts tokens 1..width-1
    for i, (_, cont, _) in enumerate(rows):
        if len(cont) > 1:
            tgt = torch.tensor(cont[1:], device=engine.device)
            picked = logp[i, : len(cont) - 1].gather(-1, tgt[:, None])[:, 0]
            results[i].token_logprobs.extend(picked.tolist())
    return results


def batch_past(
    engine: LanguageEngine, states: Sequence[PrefixState], width: int
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """Stack prefix KVs into one batch (left-padded) and an attention mask (B, L + width).

    Each distinct state is padded once; rows that share a state are views of it.
    """
    longest = max(s.length for s in states)
    mask = torch.zeros((len(states), longest + width), dtype=torch.long, device=engine.device)
    unique: dict[int, int] = {}
    for s in states:
        unique.setdefault(id(s), len(unique))
    distinct = list({id(s): s for s in states}.values())
    rows = torch.tensor([unique[id(s)] for s in states], device=engine.device)
    past = []
    for layer in range(len(distinct[0].kv)):
        ks = [F.pad(s.kv[layer][0], (0, 0, longest - s.length, 0)) for s in distinct]
        vs = [F.pad(s.kv[layer][1], (0, 0, longest - s.length, 0)) for s in distinct]
        k, v = (torch.cat(ks), torch.cat(vs)) if len(distinct) > 1 else (ks[0], vs[0])
        if len(distinct) == 1:
            past.append((k.expand(len(states), -1, -1, -1), v.expand(len(states), -1, -1, -1)))
        else:
            past.append((k.index_select(0, rows), v.index_select(0, rows)))
    for i, s in enumerate(states):
        mask[i, longest - s.length : longest] = 1
    return past, mask
