"""Wire models of each protocol the service speaks besides its native API (`core.schemas`, which
the client shares): OpenAI/vLLM completions and scoring (`openai`), chat completions
(`openai_chat`), OpenRLHF's remote reward model (`openrlhf`), the pair viewer's summary
endpoint (`viewer`); and the JSON Schema pieces they share (here)."""

from __future__ import annotations

from typing import Any

from pydantic import BeforeValidator

from selfreward_vlm.core.schemas import DATA_URI_PATTERN, DEFAULT_MAX_ITEMS

# An `image_url.url` as the service reads it with default settings: an image id (sha256 hex)
# or a `data:image/...;base64,` URI (http(s) URLs only where the operator allows them).
IMAGE_URL_PATTERN = f"^[0-9a-f]{{64}}$|{DATA_URI_PATTERN}"


def same_lengths(names: tuple[str, ...], counts: range) -> list[dict[str, Any]]:
    """`anyOf` branches saying that the fields `names` hold as many items as each other, for
    each count in `counts`. JSON Schema cannot compare two arrays' lengths, so the lengths
    are listed, up to the default `max_items` (a field that is null or absent passes:
    `minItems` constrains arrays only)."""
    return [{"properties": {n: {"minItems": k, "maxItems": k} for n in names}} for k in counts]


UP_TO_MAX_ITEMS = range(DEFAULT_MAX_ITEMS + 1)


def _json_false(value: Any) -> Any:
    if value is not False:  # pydantic's literal check would take 0 for False
        raise ValueError("only false is supported")
    return value


OnlyFalse = BeforeValidator(_json_false)
