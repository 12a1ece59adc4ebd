"""Reference log-probs from the service (`--reference-logprobs service`).

Instead of a second forward in the trainer, each pair's chosen and rejected responses are scored
once by `POST /v1/logprobs` with `model` = the reference's adapter name on the service. The
per-token log-probs go into dataset columns `ref_chosen_token_logps`/`ref_rejected_token_logps`;
the collator sums the tokens that fit `max_length` into TRL's `ref_chosen_logps`/
`ref_rejected_logps`, which DPOTrainer uses in place of its reference forward.

The service returns the token ids it scored; they must equal the trainer's completion tokens
(`ServiceAlignedCollator.encode_completion`), else the log-probs belong to another sequence and
training would be silently wrong, so a mismatch raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from selfreward_vlm.core.schemas import PreferencePair
from selfreward_vlm.trainer.collator import ServiceAlignedCollator


class TokenizationMismatchError(RuntimeError):
    """The service tokenized a response differently from the trainer."""


def _check_ids(pair_id: str, side: str, service_ids: Sequence[int], ours: list[int]) -> None:
    if list(service_ids) != ours:
        raise TokenizationMismatchError(
            f"pair {pair_id} {side}: the service scored token ids {list(service_ids)} but the "
            f"trainer trains on {ours}; service and trainer must use the same tokenizer"
        )


def service_reference_logps(
    client: Any,
    pairs: list[PreferencePair],
    reference_name: str,
    collator: ServiceAlignedCollator,
) -> list[dict[str, list[float]]]:
    """Per pair: `{"ref_chosen_token_logps": [...], "ref_rejected_token_logps": [...]}`."""
    eos = collator.eos_text
    columns = []
    for pair in pairs:
        if len(pair.images) > 1:
            raise ValueError(f"pair {pair.id}: the service scores at most one image per prompt")
        image = pair.images[0] if pair.images else None  # the client sends an id as ImageRef
        response = client.logprobs(
            model=reference_name,
            image=image,
            prompt=pair.prompt,
            prefix="",
            continuations=[pair.chosen + eos, pair.rejected + eos],
        )
        chosen, rejected = response.results
        _check_ids(pair.id, "chosen", chosen.token_ids, collator.encode_completion(pair.chosen))
        _check_ids(
            pair.id, "rejected", rejected.token_ids, collator.encode_completion(pair.rejected)
        )
        columns.append(
            {
                "ref_chosen_token_logps": list(chosen.token_logprobs),
                "ref_rejected_token_logps": list(rejected.token_logprobs),
            }
        )
    return columns
