"""CSR, official-code mode: what github.com/YiyangZhou/CSR `inference_csr/` does, which is what
produced the paper's tables but differs from the paper's text.

The published pipeline has three scripts: `sample.py` grows a search tree by language score only,
`score.py` cleans the tree and adds CLIP scores afterwards, `construct.py` ranks and picks pairs.
Reproduced here:
- Search prunes by the language score alone: a child's score is its parent's plus the HF beam
  score of its sentence; of the unfinished children pooled over all live nodes, the best
  `num_beams//2 − 1` (1) and worst `num_beams//2` (2) stay live, and only when the pool holds at
  least `num_beams` (5) children — a smaller pool is kept whole (`min_pool`). Finished children
  are never pruned. CLIP plays no part in the search.
- After the search: children with fewer than 4 new characters, or degenerate text, are removed
  with their subtrees. `degenerate_rule="official"` is `utils.py` `clean_tree` restated
  (`core.selection.is_degenerate_official`: foreign scripts, long repeats, 13 commas, many line
  breaks; emoji are deleted by `clean_text` first, so they never drop a sentence);
  `"strict"` is ours (6 commas, emoji drop the sentence).
- Each node's children are ranked among themselves: rank = (position + 1)/n by descending
  language score and by descending CLIP score (1/n is best); a sentence's value is
  (1−α)·rank_T + α·rank_I, α = 0.9. A response's value is the sum over its sentences divided by
  the number of nodes on its path *including the empty root* (sentences + 1); the lowest value is
  chosen, the highest rejected. `reward` in the pair is 1 − that value (higher is better).

Differences, forced by the service or chosen deliberately:
- The sentence's language score is the candidate's `score` from `/v1/generate`: like HF's
  `sequences_scores`, the sum of *processed* log-probs (diversity penalty included) over the
  length (a service that does not send it: the mean raw log-prob).
- The official code ends sentences at the "." token only (`eos_token_id=period_id` 29889); so
  does this mode (`stop_mode="token"`: the service's `stop="token"`, the token whose vocabulary
  string is `stop_text`, not every token that contains it). The official code marks a node
  final when EOS occurs anywhere in it (HF keeps generating past EOS, and the decoded text keeps
  what follows it); the service stops at EOS, which ends the response here. An EOS-only
  candidate (no new text) would be dropped by the 4-character rule and its path could never
  finish, so here it closes its parent's response instead and gets no rank of its own.
- CLIP rank uses the raw cosine (the official code ranks 100·cos unclipped), so absent objects
  clipped to R_I = 0 still rank by how absent they are. CLIP reads the sentence as generated;
  the released code gives it the `clean_text` version (emoji and other characters outside its
  list deleted), which differs only for such characters.
- The official `max_length` 1024 counts characters of the decoded prompt + response; here it is
  generated tokens (`max_total_tokens`). The official code has no depth cap (`max_steps=None`,
  the default); `max_steps` can bound it.
- A bug not copied: `utils.py` `extract_new_text` takes a child's new sentence as
  `child.text[len(parent.text) + 3:]`, a character offset that holds only when the decoded
  sequence is 3 characters longer than the parent's text before the new sentence; otherwise it
  cuts the sentence's first characters or keeps the parent's last ones (for CLIP, for the
  4-character rule and for the filter). Here the new text is exactly what was generated.
- It picks a pair even when chosen == rejected; here a prompt with fewer than 2 distinct
  non-empty responses gives no pair.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

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
)
from selfreward_vlm.client.methods.csr import propose
from selfreward_vlm.core import defaults
from selfreward_vlm.core.rewards import language_score
from selfreward_vlm.core.schemas import Candidate, ResponseScore, SentenceScore, StopMode
from selfreward_vlm.core.selection import (
    fused_rank,
    is_degenerate,
    is_degenerate_official,
    keep_extremes,
    mean_fused_rank,
    normalize_sentence,
    official_clean_text,
    pick_chosen_rejected,
    sibling_ranks,
)

METHOD = "csr-official"
DegenerateRule = Literal["official", "strict"]


@dataclass(frozen=True)
class CSROfficialConfig:
    """The official code's settings (`sample.py`, `score.py`, `construct.py`, `step*.sh`)."""

    alpha: float = defaults.FUSED_RANK_ALPHA  # weight of the CLIP rank (step3.sh CLIP_ALPHA)
    num_candidates: int = 5  # num_token_beams = num_return_sequences
    num_beam_groups: int = 5
    diversity_penalty: float = 3.0
    max_new_tokens: int = 70  # sample.py's argparse default and step1.sh (the paper says 74)
    max_total_tokens: int = 1024
    keep_top: int = 1  # num_beams // 2 - 1
    keep_bottom: int = 2  # num_beams // 2
    min_pool: int = 5  # prune only a pool of at least num_beams children
    max_steps: int | None = None  # sample.py: `while active_nodes`, no depth cap
    min_sentence_chars: int = 4
    drop_degenerate: bool = True
    degenerate_rule: DegenerateRule = "official"  # utils.py clean_tree; "strict" is ours
    count_root_in_mean: bool = True
    stop_text: str = "."
    stop_mode: StopMode = "token"  # sample.py: eos_token_id=period_id, the "." token alone
    clip_scale: float = defaults.CLIP_SCALE
    clip_batch: int = 64
    preset: str | None = None

    def __post_init__(self) -> None:
        check_config(
            self,
            {"degenerate_rule": DegenerateRule, "stop_mode": StopMode},
            unit=("alpha",),
        )
        if self.keep_top + self.keep_bottom < 1 or self.num_candidates < 1:
            raise ValueError("need num_candidates >= 1 and keep_top + keep_bottom >= 1")


@dataclass(eq=False)
class Node:
    """A node of the search tree; the root is the empty response."""

    prefix: str = ""  # the response up to and including this sentence, as generated
    text: str = ""  # this sentence, normalised
    lm: float = 0.0  # cumulative language score of the path (sum of sentence scores)
    sentence_lm: float = 0.0
    tokens: int = 0
    final: bool = False
    eos: bool = False
    depth: int = 0
    children: list[Node] = field(default_factory=list)
    cosine: float = 0.0
    relevance: float = 0.0
    rank_t: float = 0.0
    rank_i: float = 0.0


def _grow(node: Node, cand: Candidate, cfg: CSROfficialConfig) -> Node | None:
    """Attach a candidate as a child; an EOS-only candidate closes `node` instead (None)."""
    text = normalize_sentence(cand.text)
    if cand.finished and not text:
        node.final = node.eos = True
        return None
    # HF's sequences_scores: the service's beam score (penalty included); older services
    # that do not send it get the mean raw log-prob.
    score = (
        cand.score
        if cand.score is not None
        else language_score(cand.token_logprobs, "mean_logprob")
    )
    tokens = node.tokens + len(cand.token_ids)
    child = Node(
        node.prefix + cand.text, text, node.lm + score, score, tokens,
        final=cand.finished or tokens >= cfg.max_total_tokens, eos=cand.finished,
        depth=node.depth + 1,
    )  # fmt: skip
    node.children.append(child)
    return child


async def search(
    client: AsyncScorer, item: PromptItem, ctx: RunContext, cfg: CSROfficialConfig,
    stats: dict[str, float],
) -> tuple[Node, int]:  # fmt: skip
    """Grow the tree by language score only (`sample.py`); returns (root, steps)."""
    root = Node()
    live, steps = [root], 0
    while live and (cfg.max_steps is None or steps < cfg.max_steps):
        steps += 1
        batches = await asyncio.gather(
            *(propose(client, item, ctx, cfg, n.prefix, n.tokens, stats) for n in live)
        )
        pool = []
        for node, cands in zip(live, batches, strict=True):
            node.final = node.final or not cands  # no candidates: the token budget is reached
            for cand in cands:
                child = _grow(node, cand, cfg)
                if child is not None and not child.final:
                    pool.append(child)
        keep = keep_extremes([c.lm for c in pool], cfg.keep_top, cfg.keep_bottom, cfg.min_pool)
        live = [pool[i] for i in keep]
    for node in live:
        node.final = True  # out of steps: finished by length
    return root, steps


def _length(text: str, cfg: CSROfficialConfig) -> int:
    """The length the 4-character rule measures: under the official rule, of the text
    `clean_text` leaves (score.py measures `extract_new_text`, which cleans)."""
    return len(official_clean_text(text).strip() if cfg.degenerate_rule == "official" else text)


def _clean(node: Node, cfg: CSROfficialConfig) -> None:
    """`score.py`'s filters: short or degenerate sentences leave with their subtrees."""
    degenerate = is_degenerate_official if cfg.degenerate_rule == "official" else is_degenerate
    node.children = [
        c
        for c in node.children
        if _length(c.text, cfg) >= cfg.min_sentence_chars
        and not (cfg.drop_degenerate and degenerate(c.prefix[len(node.prefix) :].strip()))
    ]
    for c in node.children:
        _clean(c, cfg)


def _walk(node: Node) -> Iterator[Node]:
    yield node
    for c in node.children:
        yield from _walk(c)


def _rank(root: Node, clip: dict[str, tuple[float, float]]) -> None:
    """CLIP scores, then sibling ranks by language score and by CLIP cosine."""
    for node in _walk(root):
        if node is not root:
            node.cosine, node.relevance = clip[node.text]
    for node in _walk(root):
        if node.children:
            by_t = sibling_ranks([c.lm for c in node.children])  # = sentence order
            by_i = sibling_ranks([c.cosine for c in node.children])
            for c, rt, ri in zip(node.children, by_t, by_i, strict=True):
                c.rank_t, c.rank_i = rt, ri


def _paths(node: Node, trail: tuple[Node, ...] = ()) -> Iterator[tuple[Node, ...]]:
    """Every root-to-final path (a final node may also have children: a closed parent)."""
    trail = (*trail, node) if node.depth else trail
    if node.final:
        yield trail
    for c in node.children:
        yield from _paths(c, trail)


def response_score(path: tuple[Node, ...], cfg: CSROfficialConfig) -> ResponseScore:
    """The pair's record: per sentence its language score, CLIP relevance, ranks, fused rank."""
    fused = [fused_rank(n.rank_t, n.rank_i, cfg.alpha) for n in path]
    value = mean_fused_rank(fused, cfg.count_root_in_mean)
    sentences = [
        SentenceScore(
            text=n.text, r_t=n.sentence_lm, r_i=n.relevance, reward=f,
            extra={"rank_t": n.rank_t, "rank_i": n.rank_i, "cosine": n.cosine, "path_lm": n.lm},
        )
        for n, f in zip(path, fused, strict=True)
    ]  # fmt: skip
    extra = {
        "mean_fused_rank": value, "sum_fused_rank": sum(fused),
        "num_sentences": float(len(path)), "num_tokens": float(path[-1].tokens),
        "eos": float(path[-1].eos), "mean_r_i": mean([n.relevance for n in path]),
        "mean_r_t": mean([n.sentence_lm for n in path]),
    }  # fmt: skip
    return ResponseScore(reward=1.0 - value, sentences=sentences, extra=extra)


async def csr_official(
    client: AsyncScorer, item: PromptItem, ctx: RunContext | None = None,
    config: CSROfficialConfig | None = None,
) -> MethodResult:  # fmt: skip
    """CSR as the published code runs it, for one prompt: at most one pair."""
    ctx, cfg = ctx or RunContext(), config or CSROfficialConfig()
    if item.image_id is None:
        return MethodResult(skipped="csr-official needs an image (CLIP ranks)")
    stats: dict[str, float] = {}
    root, steps = await search(client, item, ctx, cfg, stats)
    _clean(root, cfg)
    texts = [n.text for n in _walk(root) if n is not root]
    _rank(root, await clip_cosines(client, item.image_id, texts, cfg.clip_scale, cfg.clip_batch))
    paths = [p for p in _paths(root) if p]  # an empty path is the empty response
    scores = [response_score(p, cfg) for p in paths]
    responses = [p[-1].prefix.strip() for p in paths]
    stats |= {"steps": float(steps), "finished": float(len(paths)), "sentences": float(len(texts))}
    pick = pick_chosen_rejected(responses, [s.reward for s in scores])
    if pick is None:
        why = f"fewer than 2 distinct finished responses ({len(paths)})"
        return MethodResult(skipped=why, stats=stats)
    c, r = pick
    pair = make_pair(
        METHOD, item, ctx, (responses[c], scores[c]), (responses[r], scores[r]),
        config_params(cfg, mode="official"),
    )  # fmt: skip
    return MethodResult(pairs=[pair], stats=stats)
