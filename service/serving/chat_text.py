"""Reading a chat-templated text back into the pieces the native routes take.

Foreign protocols hand the service whole texts: OpenRLHF the decoded prompt + response (image
placeholders expanded by the processor, EOS included), vLLM-style completions the templated
prompt followed by the text to score. The native handlers take the user turn and the assistant
text. These functions invert the model's own chat template, and cut a response off its prompt
on token ids. `engine` is the service's `LanguageEngine` (tokenizer, `render_prompt`,
`image_token_id`).
"""

from __future__ import annotations

import re
from typing import Any

_SENTINEL = "\x00selfreward-user-turn\x00"


def template_parts(engine: Any, with_image: bool) -> tuple[str, str]:
    """(head, tail) of the model's chat template around the user's text: `head + user + tail`
    is what the service renders for a user turn (tail ends with the assistant tag)."""
    head, _, tail = engine.render_prompt(_SENTINEL, with_image).partition(_SENTINEL)
    return head, tail


def collapse_placeholders(engine: Any, text: str) -> str:
    """`text` with each run of the model's image placeholder collapsed to one."""
    if engine.image_token_id is None:
        return text
    placeholder = engine.tokenizer.convert_ids_to_tokens(engine.image_token_id)
    return re.sub(f"(?:{re.escape(placeholder)})+", placeholder, text)


def split_templated(engine: Any, text: str, with_image: bool) -> tuple[str, str] | None:
    """(user turn, what follows the assistant tag) of a chat-templated text (runs of image
    placeholders collapsed first); None when the text does not fit the template."""
    text = collapse_placeholders(engine, text)
    head, tail = template_parts(engine, with_image)
    if not text.startswith(head):
        return None
    end = text.find(tail, len(head)) if tail else len(text)
    if end < 0:
        return None
    return text[len(head) : end], text[end + len(tail) :]


def response_after(engine: Any, query: str, prompt: str) -> str | None:
    """The text of `query` after `prompt`, matched on token ids, special tokens (EOS) dropped;
    None when the query does not start with the prompt."""
    response = _after_prompt(
        _canonical_ids(engine, query), _canonical_ids(engine, prompt), engine.image_token_id
    )
    if response is None:
        return None
    return str(engine.tokenizer.decode(response, skip_special_tokens=True))


def _canonical_ids(engine: Any, text: str) -> list[int]:
    """Token ids of `text` with each run of image placeholders collapsed to one."""
    ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    image = engine.image_token_id
    return [t for k, t in enumerate(ids) if t != image or k == 0 or ids[k - 1] != image]


def _after_prompt(q: list[int], p: list[int], image: int | None) -> list[int] | None:
    """The ids of `q` after the prompt `p`. A processor may expand an image into more than a
    run of placeholders (tile rows, separators: Idefics3, Gemma 3): then the prompt's tokens
    before its first placeholder must start `q`, and its tokens after the last placeholder
    (the user's text and the assistant tag) must follow somewhere in `q`."""
    if q[: len(p)] == p:
        return q[len(p) :]
    if image is None or image not in p:
        return None
    first, last = p.index(image), len(p) - 1 - p[::-1].index(image)
    tail = p[last + 1 :]
    if not tail or q[:first] != p[:first]:
        return None
    for start in range(first, len(q) - len(tail) + 1):
        if q[start : start + len(tail)] == tail:
            return q[start + len(tail) :]
    return None
