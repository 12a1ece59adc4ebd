"""Decoding-state bookkeeping on a family's fast path (review of issue 9, finding 4)."""

from __future__ import annotations

import torch

from selfreward_vlm.core.schemas import Usage
from selfreward_vlm.service.engine.decoding import _Rows
from tests.families_fixtures import PROMPT, picture


def test_remembered_candidate_keeps_only_its_own_logprob_row(family_engine) -> None:
    """A finished candidate's cached state holds a V-float copy of its next-token log-probs,
    not a view that keeps the whole (rows, V) step tensor alive."""
    engine = family_engine("llava").engine
    img, usage = picture((32, 32)), Usage()
    with torch.inference_mode(), engine.lock, engine.adapters.active("base"):
        prompt = engine.encode_prompt(PROMPT, "decode-img", img)
        n = len(prompt.ids)
        state = engine.prefix_state("base", "decode-img", img, prompt, prompt.ids, n, usage)
        rows = _Rows(engine, state, 4, usage)
        logp = rows.step([0, 0, 0], [5, 6, 7])  # (3, V)
        rows.remember(1, [6, 8], logp[1])
        cached = engine.prefix_cache.longest_prefix(state.namespace, [*prompt.ids, 6], n + 1)
    assert cached is not None and cached.length == n + 1
    kept = cached.next_logprobs
    assert torch.equal(kept, logp[1])
    assert kept.untyped_storage().nbytes() == logp.shape[-1] * kept.element_size()
