"""CSR, paper mode: sentence-level beam search under the calibrated reward (CSR Alg. 1, eq. 2-4).

Per prompt, live paths start empty. Each step proposes `num_candidates` next sentences per live
path (`/v1/generate`, diverse beam search, stop at "." or EOS), scores every candidate with
R = λ·R_I + (1−λ)·R_T and pools the children of all live paths; the `keep_top` best and
`keep_bottom` worst unfinished children stay live. Chosen/rejected are the finished responses
with the highest/lowest path reward (sum of sentence rewards, or mean).

Decisions (README "The levers, measured"; the tunable ones are config fields, recorded in
`params`):
- R_T comes from the candidate's own raw `token_logprobs` (no second forward: the speed design);
  for a sentence candidate they include the "." token, for an EOS candidate the EOS token.
- R_I: one `/v1/clip` request per step for the distinct texts of all live paths' candidates
  (they share the image), on the sentence stripped and whitespace-normalised.
- End of response: a candidate that ends the response without adding text has nothing for CLIP
  to score. `stop_r_i="zero"` (default) gives it R_I = 0, so stopping must beat adding a weak
  sentence and CLIP can veto an irrelevant one; `"path"` gives it the path's mean R_I. Its step
  stays on the path (so it counts in `path_score="mean"`), and is marked `end_of_response`.
- Finished children (EOS, or `max_total_tokens` generated tokens) always enter the finished
  pool, as in the official code; pruning only ranks the unfinished ones. After `max_steps` the
  remaining live paths are finished by length.
- Length: with `path_score="sum"` and R ≥ 0 for every sentence (R_I ≥ 0 and λ near 1), adding
  a sentence never lowers a path's reward, so the longest finished path (often the one cut by
  `max_steps`) is chosen and the shortest rejected: the pairs teach length more than relevance.
  `r_i_offset` (default 0 = paper) subtracts a baseline from each sentence's R_I, so a sentence
  must be clearly relevant to add reward and an irrelevant one costs reward; `"mean"` divides by
  the number of steps instead. But with `"mean"` and `stop_r_i="zero"` a path cut off by
  `max_steps` has no end-of-response step (R_I 0) to dilute its mean, so it beats every path
  that ended: on synthetic trees the chosen response was cut off every time.
  `exclude_cut_off` (default off = paper) lets only EOS-ended paths be chosen or rejected.
  Chosen vs rejected lengths per run are in the demo's report (`methods.lengths`).
- `penalize_duplicate_sentences` (default off = paper) keeps a repeated sentence but scores its
  R_I as 0: dropping repeats keeps them out of chosen AND rejected, so DPO never sees one.
- `drop_duplicate_sentences` (default off = paper) drops a candidate repeating a sentence of its
  own path. Identical sibling candidates (same parent, same text) are always merged: they would
  grow identical subtrees.
- Empty responses are never chosen or rejected: they teach the policy nothing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Protocol

from selfreward_vlm.client.errors import InvalidRequestError
from selfreward_vlm.client.methods.base import (
    AsyncScorer,
    MethodResult,
    PromptItem,
    RunContext,
    check_config,
    clip_cosines,
    config_params,
    make_pair,
    mean,
    tally,
)
from selfreward_vlm.core import defaults
from selfreward_vlm.core.rewards import (
    PathScore,
    StopRelevance,
    calibrated_reward,
    language_score,
    path_reward,
    stop_relevance,
)
from selfreward_vlm.core.schemas import (
    Candidate,
    LanguageScore,
    ResponseScore,
    SentenceScore,
    StopMode,
)
from selfreward_vlm.core.selection import keep_extremes, normalize_sentence, pick_chosen_rejected

METHOD = "csr"


@dataclass(frozen=True)
class CSRConfig:
    """CSR paper mode; defaults are the paper's (appendix A.1) unless noted."""

    lam: float = defaults.LAMBDA  # weight of R_I in R = λ·R_I + (1−λ)·R_T
    language_score: LanguageScore = "prob"  # R_T: eq. 2 product of token probabilities
    path_score: PathScore = "sum"  # R(y) = Σ R(s); "mean" is what the official code averages
    num_candidates: int = 5
    num_beam_groups: int = 5
    diversity_penalty: float = 3.0
    max_new_tokens: int = 74  # per sentence
    max_total_tokens: int = 1024  # generated tokens of a response
    keep_top: int = 1
    keep_bottom: int = 2
    max_steps: int | None = 12  # not in the paper: a bound on sentences per response
    stop_r_i: StopRelevance = "zero"
    r_i_offset: float = 0.0  # not in the paper: R = λ·(R_I − offset) + (1−λ)·R_T for sentences
    exclude_cut_off: bool = False  # not in the paper: only EOS-ended paths are chosen/rejected
    penalize_duplicate_sentences: bool = False  # a sentence the path already said gets R_I 0
    drop_duplicate_sentences: bool = False
    stop_text: str = "."
    stop_mode: StopMode = "sentence"  # a sentence ends at any token whose text holds stop_text
    clip_scale: float = defaults.CLIP_SCALE
    clip_batch: int = 64  # texts per /v1/clip request
    preset: str | None = None  # the preset these settings came from (recorded in `params`)

    def __post_init__(self) -> None:
        check_config(
            self,
            {
                "language_score": LanguageScore,
                "path_score": PathScore,
                "stop_r_i": StopRelevance,
                "stop_mode": StopMode,
            },
            unit=("lam",),
        )
        if self.keep_top + self.keep_bottom < 1 or self.num_candidates < 1:
            raise ValueError("need num_candidates >= 1 and keep_top + keep_bottom >= 1")


@dataclass(frozen=True)
class Step:
    """One sentence of a path with the scores it was ranked by."""

    raw: str  # as generated: the next prefix appends it verbatim
    text: str  # stripped and normalised: what CLIP saw
    r_t: float
    r_i: float
    reward: float
    num_tokens: int
    cosine: float | None = None
    is_stop: bool = False  # the end-of-response candidate (no text)


@dataclass(frozen=True)
class SearchPath:
    """A partial or finished response."""

    steps: tuple[Step, ...] = ()
    tokens: int = 0
    stop_reason: str | None = None  # "eos" | "length" once finished

    @property
    def prefix(self) -> str:
        return "".join(s.raw for s in self.steps)

    @property
    def response(self) -> str:
        return self.prefix.strip()

    def score(self, mode: PathScore) -> float:
        return path_reward([s.reward for s in self.steps], mode)


class BeamSettings(Protocol):
    """The generation settings CSR's two modes share."""

    @property
    def num_candidates(self) -> int: ...
    @property
    def num_beam_groups(self) -> int: ...
    @property
    def diversity_penalty(self) -> float: ...
    @property
    def max_new_tokens(self) -> int: ...
    @property
    def max_total_tokens(self) -> int: ...
    @property
    def stop_text(self) -> str: ...
    @property
    def stop_mode(self) -> StopMode: ...


async def propose(
    client: AsyncScorer, item: PromptItem, ctx: RunContext, cfg: BeamSettings, prefix: str,
    used_tokens: int, stats: dict[str, float],
) -> list[Candidate]:  # fmt: skip
    """Next-sentence candidates of one path by diverse beam search (shared with csr-official);
    a sentence may not run past the response's token budget. Work is tallied in `stats`.

    No candidates (`[]`) means the path has reached the service's token budget: prompt +
    prefix + `max_new_tokens` would pass its limit (`GET /info` `max_text_tokens`; the service
    answers 422 naming `max_new_tokens`). The caller ends such a path as `length`."""
    budget = max(1, min(cfg.max_new_tokens, cfg.max_total_tokens - used_tokens))
    if ctx.max_text_tokens is not None and used_tokens + 1 >= ctx.max_text_tokens:
        stats["token_budget_reached"] = stats.get("token_budget_reached", 0.0) + 1
        return []
    try:
        resp = await client.generate(
            item.prompt, image=item.image_id, prefix=prefix, model=ctx.model,
            strategy="diverse_beam", n=cfg.num_candidates, num_beam_groups=cfg.num_beam_groups,
            diversity_penalty=cfg.diversity_penalty, stop=cfg.stop_mode, stop_text=cfg.stop_text,
            max_new_tokens=budget,
        )  # fmt: skip
    except InvalidRequestError as exc:
        if exc.field != "max_new_tokens":
            raise
        stats["token_budget_reached"] = stats.get("token_budget_reached", 0.0) + 1
        return []
    tally(stats, resp)
    return resp.candidates


def _admissible(path: SearchPath, cands: list[Candidate], cfg: CSRConfig) -> list[Candidate]:
    """Merge identical siblings; optionally drop sentences the path already said."""
    said = {s.text for s in path.steps if s.text}
    seen: set[tuple[str, bool]] = set()
    out = []
    for cand in cands:
        key = (cand.text, cand.finished)
        text = normalize_sentence(cand.text)
        if key in seen or (cfg.drop_duplicate_sentences and text and text in said):
            continue
        seen.add(key)
        out.append(cand)
    return out


def _child(
    path: SearchPath, cand: Candidate, clip: dict[str, tuple[float, float]], cfg: CSRConfig
) -> SearchPath:
    text = normalize_sentence(cand.text)
    r_t = language_score(cand.token_logprobs, cfg.language_score)
    is_stop = cand.finished and not text
    cosine: float | None = None
    if text:
        cosine, r_i = clip[text]
        if cfg.penalize_duplicate_sentences and text in {s.text for s in path.steps}:
            r_i = 0.0  # says nothing new about the image: kept, so a rejected path can show it
    elif is_stop:
        r_i = stop_relevance(cfg.stop_r_i, [s.r_i for s in path.steps if s.text])
    else:
        r_i = 0.0  # whitespace only: nothing for CLIP to see
    reward = calibrated_reward(r_i - (cfg.r_i_offset if text else 0.0), r_t, cfg.lam)
    step = Step(cand.text, text, r_t, r_i, reward, len(cand.token_ids), cosine, is_stop)
    tokens = path.tokens + len(cand.token_ids)
    reason = "eos" if cand.finished else ("length" if tokens >= cfg.max_total_tokens else None)
    return SearchPath((*path.steps, step), tokens, reason)


async def _expand(
    client: AsyncScorer, item: PromptItem, ctx: RunContext, cfg: CSRConfig,
    live: list[SearchPath], stats: dict[str, float],
) -> list[SearchPath]:  # fmt: skip
    """All scored children of the live paths: their generate calls run concurrently, then one
    CLIP request (per `clip_batch` texts) scores every candidate sentence of the step."""
    batches = await asyncio.gather(
        *(propose(client, item, ctx, cfg, p.prefix, p.tokens, stats) for p in live)
    )
    proposals = [
        (p, c) for p, cands in zip(live, batches, strict=True) for c in _admissible(p, cands, cfg)
    ]
    texts = [normalize_sentence(c.text) for _, c in proposals]
    clip = await clip_cosines(client, item.image_id, texts, cfg.clip_scale, cfg.clip_batch)
    # A path that got no candidates reached the token budget: it is finished, by length.
    ended = [replace(p, stop_reason="length") for p, cands in zip(live, batches, strict=True)
             if not cands]  # fmt: skip
    return [_child(p, c, clip, cfg) for p, c in proposals] + ended


async def search(
    client: AsyncScorer, item: PromptItem, ctx: RunContext, cfg: CSRConfig,
    stats: dict[str, float],
) -> tuple[list[SearchPath], int]:  # fmt: skip
    """Run the sentence-level beam search; returns (finished paths, steps taken)."""
    live, steps = [SearchPath()], 0
    finished: list[SearchPath] = []
    while live and (cfg.max_steps is None or steps < cfg.max_steps):
        steps += 1
        pool: list[SearchPath] = []
        for child in await _expand(client, item, ctx, cfg, live, stats):
            (finished if child.stop_reason else pool).append(child)
        scores = [c.score(cfg.path_score) for c in pool]
        live = [pool[i] for i in keep_extremes(scores, cfg.keep_top, cfg.keep_bottom)]
    finished += [replace(p, stop_reason="length") for p in live]
    return finished, steps


def response_score(path: SearchPath, cfg: CSRConfig) -> ResponseScore:
    """The pair's record of a path: every sentence's R_T, R_I, R, and path totals."""
    sentences = [
        SentenceScore(
            text=s.text, r_t=s.r_t, r_i=s.r_i, reward=s.reward,
            extra={"num_tokens": float(s.num_tokens), "end_of_response": float(s.is_stop)}
            | ({} if s.cosine is None else {"cosine": s.cosine}),
        )
        for s in path.steps
    ]  # fmt: skip
    said = [s for s in path.steps if s.text]
    rewards = [s.reward for s in path.steps]
    extra = {
        "sum": path_reward(rewards, "sum"), "mean": path_reward(rewards, "mean"),
        "num_sentences": float(len(said)), "num_tokens": float(path.tokens),
        "eos": float(path.stop_reason == "eos"),
    }  # fmt: skip
    if said:
        extra |= {"mean_r_i": mean([s.r_i for s in said]), "mean_r_t": mean([s.r_t for s in said])}
    return ResponseScore(reward=path.score(cfg.path_score), sentences=sentences, extra=extra)


async def csr(
    client: AsyncScorer, item: PromptItem, ctx: RunContext | None = None,
    config: CSRConfig | None = None,
) -> MethodResult:  # fmt: skip
    """CSR paper mode for one prompt: at most one pair (best vs worst finished response)."""
    ctx, cfg = ctx or RunContext(), config or CSRConfig()
    if item.image_id is None:
        return MethodResult(skipped="csr needs an image (R_I is a CLIP score)")
    stats: dict[str, float] = {}
    finished, steps = await search(client, item, ctx, cfg, stats)
    paths = [p for p in finished if p.response]
    if cfg.exclude_cut_off:  # a response cut by max_steps/tokens never said it was done
        paths = [p for p in paths if p.stop_reason == "eos"]
    stats |= {"steps": float(steps), "finished": float(len(finished))}
    scores = [p.score(cfg.path_score) for p in paths]
    pick = pick_chosen_rejected([p.response for p in paths], scores)
    if pick is None:
        why = f"fewer than 2 distinct finished responses ({len(paths)})"
        return MethodResult(skipped=why, stats=stats)
    best, worst = paths[pick[0]], paths[pick[1]]
    pair = make_pair(
        METHOD, item, ctx,
        (best.response, response_score(best, cfg)), (worst.response, response_score(worst, cfg)),
        config_params(cfg, mode="paper"),
    )  # fmt: skip
    return MethodResult(pairs=[pair], stats=stats)
