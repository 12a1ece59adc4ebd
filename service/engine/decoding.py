"""Candidate generation from a cached prefix state: group (diverse) beam search, beam, sampling,
greedy. Every candidate carries its raw token log-probs (log-softmax, no penalty, no temperature),
so a search needs no second forward to score what it generated.

Group beam search follows Vijayakumar et al. (2016) as transformers implemented it before it moved
to hub code: beams split into groups; group g's scores are penalised by `diversity_penalty` times
how often each token was chosen by groups < g at the same step (Hamming diversity); a beam's score
is its cumulative penalised log-prob; finished hypotheses are ranked by score / length.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from selfreward_vlm.core.schemas import Usage
from selfreward_vlm.service.engine.cache import PrefixState
from selfreward_vlm.service.engine.families import Prompt
from selfreward_vlm.service.engine.generic_path import GenericRows
from selfreward_vlm.service.engine.kvbuffer import BufferLayer
from selfreward_vlm.service.engine.lm import LanguageEngine, Prefill
from selfreward_vlm.service.errors import InvalidRequestError

NEG_INF = float("-inf")


@dataclass
class GenerateItem:
    adapter: str
    prompt: str
    prefix: str = ""
    image_id: str | None = None
    image: Any = None
    strategy: str = "diverse_beam"
    n: int = 5
    num_beam_groups: int | None = None
    diversity_penalty: float = 3.0
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int | None = None
    stop: str = "sentence"  # see `LanguageEngine.stop_token_ids`
    stop_text: str = "."
    max_new_tokens: int = 74
    # A prompt already rendered and tokenized (raw text, as `/v1/completions` reads it): the
    # model continues these ids as they are, with no chat template; `prompt` and `prefix` are
    # then unused. `prompt_inputs`: the processor's other outputs (pixels) when it has an image.
    prompt_ids: list[int] | None = None
    prompt_inputs: dict[str, Any] = field(default_factory=dict)
    # Sampling and greedy only: a candidate also ends once its text holds one of these, and
    # each generated token keeps the `top_k` best alternatives at its position.
    stop_strings: tuple[str, ...] = ()
    top_k: int = 0
    usage: Usage = field(default_factory=Usage)


@dataclass
class Generated:
    token_ids: list[int]
    token_logprobs: list[float]
    stop_reason: str  # "sentence" | "eos" | "length" | "stop" (a stop string)
    score: float = 0.0
    top: list[list[tuple[int, float]]] = field(default_factory=list)  # per token, `top_k`


class _Rows:
    """Decoder rows of one generation that share one prefix state: an in-place KV buffer per
    layer. `reorder` forks/reorders rows (a gather within this generation's rows), `step` feeds
    each row one token on its own; `engine.ragged.decode_step` advances many generations' rows
    in one forward instead."""

    def __init__(
        self, engine: LanguageEngine, state: PrefixState, max_new_tokens: int, usage: Usage
    ):
        self.engine, self.usage, self.state = engine, usage, state
        # One in-place buffer per layer, room for the whole candidate: a step appends one token
        # instead of re-copying the prefix KV (the state's own tensors stay untouched).
        capacity = state.length + max_new_tokens + 1
        self.layers = [BufferLayer(k, v, capacity) for k, v in state.kv]
        self.rows = 1
        self.length = state.length
        self.cacheable = True  # start() clears it for an image that has no id

    @property
    def position(self) -> int:
        """The rope position of the next token fed to these rows."""
        return self.length + self.state.rope_delta

    def kv_bytes(self, rows: int, max_new_tokens: int) -> int:
        """Bytes of KV these rows hold at their longest: what the live-row budget counts."""
        k = self.layers[0].keys
        assert k is not None
        per_token = 2 * len(self.layers) * k.shape[1] * k.shape[3] * k.element_size()
        return rows * per_token * (self.state.length + max_new_tokens + 1)

    def first(self) -> torch.Tensor:
        """(1, V) next-token log-probs after the prefix state."""
        return self.state.next_logprobs[None]

    def reorder(self, parents: list[int]) -> None:
        """Keep rows `parents` (indices, repeats allowed) in this order."""
        if parents != list(range(self.rows)):  # rows reordered or forked: one gather
            idx = torch.tensor(parents, device=self.engine.device)
            for layer in self.layers:
                layer.select_rows(idx)
            self.rows = len(parents)

    def step(self, parents: list[int], tokens: list[int]) -> torch.Tensor:
        """Reorder rows to `parents`, append `tokens`; returns next-token log-probs (R, V)."""
        dev = self.engine.device
        self.reorder(parents)
        embeds = self.engine.embed(torch.tensor(tokens, device=dev)[:, None])
        pos = torch.full((len(tokens), 1), self.position, device=dev)
        hidden, _ = self.engine.run_decoder(embeds, None, None, pos, layers=self.layers)
        self.advanced(len(tokens))
        return self.engine.logprobs(hidden[:, -1])

    def advanced(self, rows: int) -> None:
        """Book one step of `rows` tokens (their KV is in the buffers now)."""
        self.length += 1
        self.usage.tokens_forwarded += rows

    def row_kv(self, row: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A copy of row `row`'s whole KV per layer, (1, H, T, D) each."""
        return [layer.row(row) for layer in self.layers]

    def remember(self, row: int, ids: list[int], next_logprobs: torch.Tensor) -> None:
        """Cache the state of a finished candidate (all its tokens but the last are in the KV),
        so that the next search step, whose prefix ends with this candidate, reuses it."""
        engine = self.engine
        if engine.naive or not ids[:-1] or not self.cacheable:
            return
        kv = self.row_kv(row)
        token_ids = self.state.token_ids + tuple(ids[:-1])
        # A copy: `next_logprobs` is a row of the whole (R, V) step tensor, which a view
        # would keep alive in the cache.
        logp = next_logprobs.clone()
        state = PrefixState(self.state.namespace, token_ids, kv, logp, self.state.rope_delta)
        engine.prefix_cache.put(state)


class SharedPrefixRows(_Rows):
    """Rows whose prefix KV is held once, as the prefix state has it; each row (beam, sample)
    owns only the KV of the tokens generated after it. Reordering beams copies suffixes only,
    and attention reads the prefix once for all rows (`ragged.ragged_attention`). The layout
    of a step batched with other generations (`ragged.decode_step`), which is the only way
    these rows are stepped."""

    def __init__(
        self, engine: LanguageEngine, state: PrefixState, max_new_tokens: int, usage: Usage
    ):
        self.engine, self.usage, self.state = engine, usage, state
        self.prefix_kv = state.kv  # (1, H, P, D) per layer; never written
        self.layers = [
            BufferLayer(k[:, :, :0], v[:, :, :0], max_new_tokens + 1) for k, v in state.kv
        ]
        self.rows = 1
        self.length = state.length
        self.cacheable = True

    def kv_bytes(self, rows: int, max_new_tokens: int) -> int:
        k = self.prefix_kv[0][0]
        per_token = 2 * len(self.layers) * k.shape[1] * k.shape[3] * k.element_size()
        return per_token * (self.state.length + rows * (max_new_tokens + 1))

    def step(self, parents: list[int], tokens: list[int]) -> torch.Tensor:
        raise NotImplementedError("shared-prefix rows are stepped by ragged.decode_step")

    def row_kv(self, row: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The shared prefix followed by row `row`'s own suffix, per layer."""
        out = []
        for (pk, pv), layer in zip(self.prefix_kv, self.layers, strict=True):
            sk, sv = layer.row(row)
            out.append((torch.cat([pk, sk], dim=-2), torch.cat([pv, sv], dim=-2)))
        return out


# A search is a generator: it yields the rows' next step (parent row of each new row, and its
# token), is sent the (rows, V) log-probs after that step, and returns its candidates.
Step = tuple[list[int], list[int]]
Search = Generator[Step, torch.Tensor, list[Generated]]


class Generation:
    """One request's generation, advanced one token per step by whoever drives it: `generate`
    alone, or the scheduler together with other requests' generations (`ragged.decode_step`).

    Construction does the request's prefill (prompt + prefix state, under the caller's lock and
    adapter), all of it, or with `prefill_chunk` its first chunk only: then `prefilling` is
    true until `prefill` has run the rest. Afterwards `pending` is the step waiting to run
    (None once `result` is set)."""

    def __init__(
        self,
        engine: LanguageEngine,
        item: GenerateItem,
        batched: bool = False,
        prefill_chunk: int | None = None,
    ):
        """`batched`: its rows will be stepped together with others' (`ragged.decode_step`),
        so they hold the prefix KV once (`SharedPrefixRows`); else each row holds a copy and
        steps alone (`_Rows.step`), the path whose numbers never depend on other requests.
        `prefill_chunk`: forward at most this many prompt tokens now (`Prefill.run`)."""
        self.engine, self.item, self._batched = engine, item, batched
        if item.strategy in ("beam", "diverse_beam") and (item.stop_strings or item.top_k):
            raise InvalidRequestError("stop strings and top_k need sampling or greedy", "strategy")
        if item.prompt_ids is not None:  # rendered and tokenized by the caller
            has_image = bool(item.prompt_inputs)
            prompt = Prompt("", list(item.prompt_ids), item.prompt_inputs, has_image=has_image)
            prefix_ids: list[int] = []
        else:
            prompt = engine.encode_prompt(item.prompt, item.image_id, item.image)
            prefix_ids = engine.encode_text(item.prefix)
            engine.check_no_image_tokens(prefix_ids, "prefix")
        ids = prompt.ids + prefix_ids
        if len(ids) + item.max_new_tokens > engine.settings.max_text_tokens:
            raise InvalidRequestError(
                f"prompt + prefix ({len(ids)} tokens) + max_new_tokens exceeds the limit of "
                f"{engine.settings.max_text_tokens} tokens",
                field="max_new_tokens",
            )
        self._stops = engine.stop_token_ids(item.stop, item.stop_text)
        self.pending: Step | None = None
        self.result: list[Generated] | None = None
        self.rows: _Rows | GenericRows
        self._prefill: Prefill | None = None
        if engine.path == "generic":
            inputs = engine.pixel_inputs(prompt, item.image) if prompt.has_image else {}
            self._start(GenericRows(engine, ids, inputs, len(prompt.ids), item.usage))
            return
        self._prefill = Prefill(
            engine, item.adapter, item.image_id, item.image, prompt, ids, len(prompt.ids),
            item.usage,
        )  # fmt: skip
        self.prefill(prefill_chunk)
        while prefill_chunk is None and self.prefilling:
            self.prefill(None)

    @property
    def prefilling(self) -> bool:
        """Whether part of its prompt is still to be forwarded (`prefill`)."""
        return self._prefill is not None and self._prefill.state is None

    def prefill(self, limit: int | None) -> int:
        """Forward the next chunk of the prompt (at most `limit` tokens of text; an image
        prompt's own forward goes whole); once it is all in, the search starts. Returns the
        tokens forwarded. Under the caller's lock and the item's adapter."""
        job = self._prefill
        assert job is not None
        done = job.run(limit) if job.state is None else 0
        if job.state is not None:
            rows_class = SharedPrefixRows if self._batched else _Rows
            rows = rows_class(self.engine, job.state, self.item.max_new_tokens, self.item.usage)
            rows.cacheable = self.item.image is None or self.item.image_id is not None
            self._start(rows)
        return done

    def _start(self, rows: _Rows | GenericRows) -> None:
        """Start the search on `rows`, whose prefix state is complete."""
        engine, item = self.engine, self.item
        self.rows = rows
        first = rows.first()
        if item.strategy in ("beam", "diverse_beam"):
            groups = (item.num_beam_groups or item.n) if item.strategy == "diverse_beam" else 1
            penalty = item.diversity_penalty if item.strategy == "diverse_beam" else 0.0
            search = group_beam_search(engine, rows, item, groups, penalty, self._stops, first)
        else:
            greedy = item.strategy == "greedy"
            search = sample(engine, rows, item, self._stops, first, greedy=greedy)
        self._search: Search = search
        self._resume(None)

    @property
    def fast(self) -> bool:
        """Whether its rows can join a batched step (fast path; the generic path cannot)."""
        return self._prefill is not None

    @property
    def batched(self) -> bool:
        """Whether its rows can only be stepped by `ragged.decode_step`."""
        return self._batched and self.fast

    @property
    def kv_bytes(self) -> int:
        """KV bytes its rows hold at their longest (0 on the generic path, which keeps none,
        and while prefilling: counted when it joins)."""
        rows = getattr(self, "rows", None)
        if not isinstance(rows, _Rows):
            return 0
        n = 1 if self.item.strategy == "greedy" else self.item.n
        return rows.kv_bytes(n, self.item.max_new_tokens)

    @property
    def live_rows(self) -> int:
        """Rows the pending step forwards."""
        return len(self.pending[1]) if self.pending is not None else 0

    def advance(self, logp: torch.Tensor) -> None:
        """Hand the search the log-probs after its pending step; sets the next step or result."""
        self._resume(logp)

    def step_alone(self) -> None:
        """Run the pending step in a forward of this generation's rows alone."""
        assert self.pending is not None
        self.advance(self.rows.step(*self.pending))

    def _resume(self, logp: torch.Tensor | None) -> None:
        try:
            self.pending = next(self._search) if logp is None else self._search.send(logp)
        except StopIteration as done:
            self.pending, self.result = None, done.value


def generate(engine: LanguageEngine, item: GenerateItem) -> list[Generated]:
    """Generate `item.n` candidates after image + prompt + prefix, this request alone."""
    with torch.inference_mode(), engine.lock, engine.adapters.active(item.adapter):
        gen = Generation(engine, item)
        while gen.pending is not None:
            gen.step_alone()
        assert gen.result is not None
        return gen.result


def _suppress(engine: LanguageEngine, logp: torch.Tensor) -> torch.Tensor:
    """Processed scores: placeholder tokens (image, pad) are never generated."""
    out = logp.clone()
    for tok in engine.never_generate:
        out[..., tok] = NEG_INF
    return out


def group_beam_search(
    engine: LanguageEngine,
    rows: _Rows | GenericRows,
    item: GenerateItem,
    groups: int,
    penalty: float,
    stops: frozenset[int],
    first: torch.Tensor,
) -> Search:
    """Group beam search with Hamming diversity; `groups == 1` is plain beam search."""
    if item.n % groups:
        raise InvalidRequestError("n must be a multiple of num_beam_groups", "num_beam_groups")
    k = item.n // groups
    # Each group starts from the one prefix row; its beams fan out after the first step.
    live: list[list[tuple[float, list[int], list[float], int]]] = [
        [(0.0, [], [], 0)] for _ in range(groups)
    ]  # per group: (score, tokens, raw logprobs, row index)
    hyps: list[list[Generated]] = [[] for _ in range(groups)]
    logp = first
    for step in range(item.max_new_tokens):
        proc_all = _suppress(engine, logp)
        freq = torch.zeros(logp.shape[-1], device=logp.device)
        parents: list[int] = []
        tokens: list[int] = []
        new_live: list[list[tuple[float, list[int], list[float], int]]] = []
        for g in range(groups):
            beams = live[g]
            if not beams:
                new_live.append([])
                continue
            rows_g = torch.tensor([b[3] for b in beams], device=logp.device)
            base = torch.tensor([b[0] for b in beams], device=logp.device)
            scores = base[:, None] + proc_all[rows_g] - penalty * freq  # (beams, V)
            top_s, top_i = scores.view(-1).topk(min(2 * k, scores.numel()))
            vocab = scores.shape[-1]
            nxt: list[tuple[float, list[int], list[float], int]] = []
            for rank, (s, flat) in enumerate(zip(top_s.tolist(), top_i.tolist(), strict=True)):
                if s == NEG_INF:
                    break
                b, tok = divmod(flat, vocab)
                beam = beams[b]
                seq, lps = [*beam[1], tok], [*beam[2], float(logp[beam[3], tok])]
                if tok in stops:
                    if rank < k:
                        reason = "eos" if tok == engine.eos_token_id else "sentence"
                        hyps[g].append(Generated(seq, lps, reason, s / len(seq)))
                        rows.remember(beam[3], seq, logp[beam[3]])
                    continue
                nxt.append((s, seq, lps, len(parents)))
                parents.append(beam[3])
                tokens.append(tok)
                if len(nxt) == k:
                    break
            for _, seq, _, _ in nxt:
                freq[seq[-1]] += 1
            done = len(hyps[g]) >= k and (
                not nxt or min(h.score for h in _best(hyps[g], k)) >= nxt[0][0] / (step + 1)
            )
            new_live.append([] if done else nxt)
        live = new_live
        keep = [b for group in live for b in group]
        if not keep or step == item.max_new_tokens - 1:
            break
        # Rows of finished groups were appended to `parents`; drop them before the forward.
        order = {b[3]: i for i, b in enumerate(keep)}
        live = [[(s, q, lp, order[r]) for s, q, lp, r in group] for group in live]
        logp = yield [parents[b[3]] for b in keep], [tokens[b[3]] for b in keep]
    for g in range(groups):
        for s, seq, lps, _ in live[g]:
            hyps[g].append(Generated(seq, lps, "length", s / max(len(seq), 1)))
    return [h for g in range(groups) for h in _best(hyps[g], k)]


def _best(hyps: list[Generated], k: int) -> list[Generated]:
    return sorted(hyps, key=lambda h: h.score, reverse=True)[:k]


class _Remembers(Protocol):
    def remember(self, row: int, ids: list[int], next_logprobs: torch.Tensor) -> None: ...


def sample(
    engine: LanguageEngine,
    rows: _Remembers,
    item: GenerateItem,
    stops: frozenset[int],
    first: torch.Tensor,
    greedy: bool,
) -> Search:
    """Independent rows: ancestral sampling (temperature, top-p, a seed per row) or greedy."""
    n = 1 if greedy else item.n
    seeds = [None if item.seed is None else item.seed + i for i in range(n)]
    gens = [torch.Generator().manual_seed(s) if s is not None else None for s in seeds]
    running = [_Sampled(i) for i in range(n)]
    out: dict[int, Generated] = {}
    logp = first
    for step in range(item.max_new_tokens):
        proc = _suppress(engine, logp)
        nxt: list[_Sampled] = []
        for cand in running:
            row = cand.row
            tok = int(proc[row].argmax()) if greedy else _draw(proc[row], item, gens[cand.index])
            cand.ids.append(tok)
            cand.logprobs.append(float(logp[row, tok]))
            if item.top_k:
                cand.top.append(top_alternatives(logp[row : row + 1], item.top_k)[0])
            reason = _stop_reason(engine, item, stops, tok, cand.ids)
            if reason:
                out[cand.index] = cand.done(reason)
                rows.remember(row, cand.ids, logp[row])
            else:
                nxt.append(cand)
        running = nxt
        if not nxt or step == item.max_new_tokens - 1:
            break
        logp = yield [c.row for c in nxt], [c.ids[-1] for c in nxt]
        for i, cand in enumerate(nxt):
            cand.row = i
    for cand in running:
        out[cand.index] = cand.done("length")
    result = [out[i] for i in range(n)]
    return result * item.n if greedy else result


def top_alternatives(logp: torch.Tensor, k: int) -> list[list[tuple[int, float]]]:
    """Per row of (R, V) log-probs, the k best (token id, log-prob), best first."""
    values, index = logp.topk(min(k, logp.shape[-1]), dim=-1)
    return [
        list(zip(i, v, strict=True)) for i, v in zip(index.tolist(), values.tolist(), strict=True)
    ]


@dataclass
class _Sampled:
    """A sampled candidate in the making: its tokens, raw log-probs, alternatives and row."""

    index: int
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    row: int = 0

    def done(self, reason: str) -> Generated:
        return Generated(self.ids, self.logprobs, reason, top=self.top)


def _stop_reason(
    engine: LanguageEngine, item: GenerateItem, stops: frozenset[int], tok: int, ids: list[int]
) -> str | None:
    """Why a candidate that just generated `tok` ends, or None."""
    if tok in stops:
        return "eos" if tok == engine.eos_token_id else "sentence"
    if item.stop_strings:
        text = engine.decode(ids)
        if any(s in text for s in item.stop_strings):
            return "stop"
    return None


def first_tokens(
    engine: LanguageEngine, item: GenerateItem, first: torch.Tensor
) -> list[Generated]:
    """One-token candidates (`item.max_new_tokens == 1`, sampling or greedy) drawn from
    next-token log-probs already computed, e.g. by a forward that scored the prompt: the same
    draw as `sample`'s first step, with no decode step and nothing cached."""
    assert item.max_new_tokens == 1 and item.strategy in ("sample", "greedy")
    stops = engine.stop_token_ids(item.stop, item.stop_text)
    search = sample(engine, _Forgets(), item, stops, first, greedy=item.strategy == "greedy")
    try:
        next(search)
    except StopIteration as done:
        return list(done.value)
    raise AssertionError("a one-token search asked for a decode step")


class _Forgets:
    def remember(self, row: int, ids: list[int], next_logprobs: torch.Tensor) -> None:
        """Nothing to cache: these candidates have no KV of their own."""


def _draw(logp: torch.Tensor, item: GenerateItem, gen: torch.Generator | None) -> int:
    """One token from softmax(logp / T), restricted to the top-p nucleus."""
    probs = torch.softmax(logp.float().cpu() / item.temperature, dim=-1)
    if not bool(torch.isfinite(probs).all()):  # an extreme temperature overflowed float32
        probs = torch.softmax(logp.double().cpu() / item.temperature, dim=-1)
        if not bool(torch.isfinite(probs).all()):  # T -> 0 is greedy in the limit
            return int(logp.argmax())
    if item.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        cut = int((sorted_p.cumsum(0) < item.top_p).sum()) + 1
        probs = torch.zeros_like(probs).scatter(0, order[:cut], sorted_p[:cut])
    return int(torch.multinomial(probs, 1, generator=gen))
