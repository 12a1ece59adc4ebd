"""The OpenAI completions API (`POST /v1/completions`) as vLLM serves it: log-likelihoods of
raw text (`echo` with `logprobs`, what lm-evaluation-harness's `local-completions` sends) and
generation from a raw prompt. How a prompt is read (`text`, `chat` or `auto`): see
`protocols.openai.CompletionRequest`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from selfreward_vlm.service.errors import InvalidRequestError
from selfreward_vlm.service.protocols.openai import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
    CompletionUsage,
    PromptTokenLogprob,
)
from selfreward_vlm.service.serving.chat_text import collapse_placeholders, split_templated
from selfreward_vlm.service.serving.common import Served, check_items, resolve_image, total_usage
from selfreward_vlm.service.serving.models import adapter_of
from selfreward_vlm.service.serving.text import Decoding, TextResult, TokenScore, encode, run
from selfreward_vlm.service.state import AppState

# How /info and the README describe the two readings of a prompt.
PROMPT_FORMATS = (
    "prompt_format 'auto' (default): a prompt that fits the model's chat template (its "
    "apply_chat_template output with the generation prompt, then an answer) is read as 'chat': "
    "only the answer's tokens get log-probs, as /v1/logprobs scores them; any other prompt is "
    "read as 'text', as vLLM does: every token after the first gets its log-prob and top-k. "
    "Pass prompt_format 'text' or 'chat' to choose."
)


@dataclass
class _Prompt:
    text: str  # as the client wrote it (a token-id prompt: its ids decoded)
    ids: list[int] | None  # the client's token ids, when it sent ids
    field: str  # the request field, for errors


async def completions(state: AppState, req: CompletionRequest) -> Served[CompletionResponse]:
    """One choice per prompt (`n` per prompt when generating), in prompt order."""
    _validate(state, req)
    adapter = adapter_of(state, req.model)
    prompts = _prompts(state, req.prompt)
    check_items(state, prompts, "prompt")
    image_id, image = await resolve_image(state, req.image)
    decoding = Decoding(
        max_tokens=req.max_tokens or 0,
        n=req.n,
        seed=req.seed,
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        stop=[req.stop] if isinstance(req.stop, str) else list(req.stop or []),
    )
    top_k = max(req.logprobs or 0, req.prompt_logprobs or 0)
    choices: list[CompletionChoice] = []
    prompt_tokens = completion_tokens = 0
    results: list[TextResult] = []
    for prompt in prompts:
        echo, result_choices, result = await _complete(
            state, req, adapter, prompt, (image_id, image), decoding, top_k
        )
        results.append(result)
        prompt_tokens += len(echo)
        for cont_tokens, text, finish in result_choices:
            completion_tokens += len(cont_tokens)
            choices.append(
                _choice(state, req, len(choices), prompt, echo, cont_tokens, text, finish)
            )
    usage = CompletionUsage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )
    body = CompletionResponse(model=req.model, choices=choices, usage=usage)
    works = [w for r in results for w in r.works]
    return Served(body, works, total_usage(*(r.usage for r in results)))


def _validate(state: AppState, req: CompletionRequest) -> None:
    if not req.max_tokens and not req.echo:
        raise InvalidRequestError("echo must be true (max_tokens=0 returns only the echo)", "echo")
    if not req.max_tokens and req.n != 1:  # scoring is deterministic: n copies say nothing more
        raise InvalidRequestError("n must be 1 when max_tokens is 0", "n")
    if req.n > state.settings.max_items:
        raise InvalidRequestError(f"n = {req.n}; at most {state.settings.max_items}", "n")
    if (req.max_tokens or 0) > state.settings.max_new_tokens:
        raise InvalidRequestError(
            f"max_tokens = {req.max_tokens}; at most {state.settings.max_new_tokens}",
            "max_tokens",
        )


def _prompts(
    state: AppState, prompt: str | list[str] | list[int] | list[list[int]]
) -> list[_Prompt]:
    """`prompt` as one entry per prompt: a text, one token-id list, or a list of either."""
    tok = state.models.engine.tokenizer  # type: ignore[union-attr]
    if isinstance(prompt, str):
        return [_Prompt(prompt, None, "prompt")]
    if not prompt:
        raise InvalidRequestError("prompt is empty", "prompt")
    single = all(isinstance(t, int) for t in prompt)
    items: list[Any] = [prompt] if single else list(prompt)
    out = []
    for i, p in enumerate(items):
        field = "prompt" if single else f"prompt.{i}"
        if isinstance(p, str):
            out.append(_Prompt(p, None, field))
            continue
        ids = [int(t) for t in p]
        if not ids or any(not 0 <= t < len(tok) for t in ids):  # the tokenizer would misread
            raise InvalidRequestError(
                f"token ids must be a non-empty list in [0, {len(tok)})", field=field
            )
        out.append(_Prompt(tok.decode(ids, skip_special_tokens=False), ids, field))
    return out


async def _complete(
    state: AppState,
    req: CompletionRequest,
    adapter: str,
    prompt: _Prompt,
    image_ref: tuple[str | None, Any],
    decoding: Decoding,
    top_k: int,
) -> tuple[list[TokenScore], list[tuple[list[TokenScore], str, str]], TextResult]:
    """(the echo's tokens, [(generated tokens, text, finish reason)] per choice, the result)."""
    engine = state.models.engine  # type: ignore[union-attr]
    image_id, image = image_ref
    chat = None
    if req.prompt_format != "text":
        chat = _templated(engine, prompt.text, image is not None)
        if chat is None and req.prompt_format == "chat":
            raise InvalidRequestError(
                "prompt_format 'chat': the prompt must be this model's chat-templated text "
                "(apply_chat_template with add_generation_prompt) followed by the text to score",
                prompt.field,
            )
    try:
        if chat is None:
            ids = encode(engine, prompt.text, prompt.ids, image, req.add_special_tokens)
            score = req.echo or not decoding.max_tokens  # else only the continuation counts
            result = await run(
                state,
                adapter,
                ids,
                top_k,
                decoding,
                image=image,
                image_id=image_id,
                score_prompt=score,
            )
            echo = result.prompt
        else:
            echo, result = await _chat_scored(
                state, req, adapter, prompt, chat, image_ref, decoding, top_k
            )
    except InvalidRequestError as exc:
        if exc.field == "prompt":
            exc.field = prompt.field
        raise
    if not decoding.max_tokens:
        return echo, [([], "", "length")], result
    return echo, [(c.tokens, c.text, c.finish_reason) for c in result.choices], result


def _templated(engine: Any, text: str, with_image: bool) -> tuple[str, str] | None:
    """(user turn, answer) when `text` fits the model's chat template (a model without one
    has no templated form)."""
    from selfreward_vlm.service.serving.chat_text import template_parts

    if template_parts(engine, with_image) == ("", ""):
        return None
    return split_templated(engine, text, with_image)


async def _chat_scored(
    state: AppState,
    req: CompletionRequest,
    adapter: str,
    prompt: _Prompt,
    chat: tuple[str, str],
    image_ref: tuple[str | None, Any],
    decoding: Decoding,
    top_k: int,
) -> tuple[list[TokenScore], TextResult]:
    """The chat reading: the whole text is scored once; the answer's tokens keep their
    log-probs, the template's tokens are echoed as the client sent them, with none."""
    engine = state.models.engine  # type: ignore[union-attr]
    image_id, image = image_ref
    answer = chat[1]
    text = collapse_placeholders(engine, prompt.text)
    add = engine.special_tokens(text).get("add_special_tokens", True)  # the engine's BOS rule
    scored = encode(engine, text, None, image, add)
    context = encode(engine, text[: len(text) - len(answer)], None, image, add).ids
    start = len(context) if scored.ids[: len(context)] == context else None
    if start is None:  # the answer's first token merged with the template's last
        start = len(scored.ids) - len(engine.encode_text(answer))
    result = await run(state, adapter, scored, top_k, decoding, image=image, image_id=image_id)
    answer_ids = scored.ids[start:]
    client = _client_context(engine, req, prompt, answer, answer_ids)
    return [TokenScore(t, None) for t in client] + result.prompt[start:], result


def _client_context(
    engine: Any, req: CompletionRequest, prompt: _Prompt, answer: str, answer_ids: list[int]
) -> list[int]:
    """The echoed tokens before the answer's: the client's own (its token ids, or its text
    tokenized as vLLM does, `add_special_tokens` honoured), so the echo has one entry per
    submitted token (expanded image placeholders included). Where the client's tokens cross
    the answer's start differently, its context text's tokens."""
    tok = engine.tokenizer
    submitted = prompt.ids
    add = req.add_special_tokens and submitted is None
    if submitted is None:
        submitted = list(tok(prompt.text, add_special_tokens=add)["input_ids"])
    if not answer_ids or submitted[len(submitted) - len(answer_ids) :] == answer_ids:
        return submitted[: len(submitted) - len(answer_ids)]
    context = prompt.text[: len(prompt.text) - len(answer)]
    return list(tok(context, add_special_tokens=add)["input_ids"])


def _choice(
    state: AppState,
    req: CompletionRequest,
    index: int,
    prompt: _Prompt,
    echo: list[TokenScore],
    generated: list[TokenScore],
    text: str,
    finish: str,
) -> CompletionChoice:
    tok = state.models.engine.tokenizer  # type: ignore[union-attr]
    shown = [*echo, *generated] if req.echo else generated
    strings = [tok.decode([t.token_id], skip_special_tokens=False) for t in shown]
    logprobs = None
    if req.logprobs is not None:
        offsets, at = [], 0
        for s in strings:
            offsets.append(at)
            at += len(s)
        logprobs = CompletionLogprobs(
            text_offset=offsets,
            token_logprobs=[t.logprob for t in shown],
            tokens=strings,
            top_logprobs=[
                _top(tok, t, s, req.logprobs) for t, s in zip(shown, strings, strict=True)
            ],
        )
    prompt_lps = None
    if req.prompt_logprobs is not None and req.echo:
        prompt_lps = [_prompt_top(tok, t, req.prompt_logprobs) for t in echo]
    return CompletionChoice(
        index=index,
        text=(prompt.text if req.echo else "") + text,
        logprobs=logprobs,
        finish_reason=finish,  # type: ignore[arg-type]
        prompt_logprobs=prompt_lps,
    )


def _top(tok: Any, t: TokenScore, string: str, k: int) -> dict[str, float] | None:
    """The chosen token first, then the top k at its position (vLLM: k, plus the chosen)."""
    if t.logprob is None:
        return None
    out = {string: t.logprob}
    for token_id, lp in t.top[:k]:
        out.setdefault(tok.decode([token_id], skip_special_tokens=False), lp)
    return out


def _prompt_top(tok: Any, t: TokenScore, k: int) -> dict[str, PromptTokenLogprob] | None:
    if t.logprob is None:
        return None
    ranks = {token_id: r for r, (token_id, _) in enumerate(t.top, start=1)}
    out = {
        str(t.token_id): PromptTokenLogprob(
            logprob=t.logprob,
            rank=ranks.get(t.token_id),
            decoded_token=tok.decode([t.token_id], skip_special_tokens=False),
        )
    }
    for r, (token_id, lp) in enumerate(t.top[:k], start=1):
        out.setdefault(
            str(token_id),
            PromptTokenLogprob(
                logprob=lp, rank=r, decoded_token=tok.decode([token_id], skip_special_tokens=False)
            ),
        )
    return out
