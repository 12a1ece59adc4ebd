"""The OpenAPI document says what the validation enforces: Schemathesis with every check,
positive and negative data, against a live server, with the admin key and without a key, on
every operation: the native routes and the compatibility routes (OpenAI/vLLM
`/v1/completions`, `/v1/chat/completions`, `/v1/score`, `/score`, `/v1/models`; OpenRLHF
`/get_reward`).

Two checks the reliability fuzzer (`test_fuzz.py`) leaves out are the point here: a request
the schema allows must not be refused (`positive_data_acceptance`), and one it forbids must
not be accepted (`negative_data_rejection`). What no JSON Schema can say is excluded case by
case (only for a schema-valid request refused with a 4xx naming it), each named in `BEYOND`
below and in the README.

Examples per operation and mode: `SELFREWARD_FUZZ_EXAMPLES` (CI: 6; `make fuzz`: 200).
"""

from __future__ import annotations

import os
import re

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.reliability import OPENAPI, Server, keyed_server, report

__all__ = ["keyed_server"]

EXAMPLES = int(os.environ.get("SELFREWARD_FUZZ_EXAMPLES", "6"))
SCHEMA = schemathesis.openapi.from_dict(OPENAPI)
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]

# 4xx refusals of schema-valid requests for what a JSON Schema cannot state: (operation path or
# "*", error type or code, field pattern). Native errors are {"error": {"type", "field"}},
# OpenAI-shaped ones {"error": {"code", "param"}}.
BEYOND = [
    # whether bytes are an image or a LoRA adapter for this model (decoding them is the check)
    ("*", "invalid_image", r".*"),
    ("*", "invalid_adapter", r".*"),
    # `num_beam_groups` must divide `n`: JSON Schema has no divisibility between two fields
    ("/v1/generate", "invalid_request", r"num_beam_groups"),
    # what depends on the served model's tokenizer and chat template: token ids below its
    # vocabulary size, its image placeholder, prompt_format "chat" fitting its template, the
    # prompt's token count against max_text_tokens
    ("/v1/completions", "invalid_request", r"prompt(\.\d+)?|image|max_tokens"),
    # the last message is the user's, one image in the whole conversation, and several
    # messages render as one user turn of the model's template: across array items or
    # model-dependent
    ("/v1/chat/completions", "invalid_request", r"messages(\.\d+.*)?"),
    # text_1 has one item or as many as text_2 (comparing two lengths; listing them is more
    # than Schemathesis's generator takes)
    ("/v1/score", "invalid_request", r"text_2"),
    ("/score", "invalid_request", r"text_2"),
    # each query must start with its templated prompt (token ids) or hold the template's
    # assistant tag, the user turn must read out of the model's template, the response's
    # tokens and sentences are counted, and a label's JSON text must parse
    ("/get_reward", "invalid_request", r"(query|prompts|labels)\.\d+(\.prompt)?"),
]


def _beyond_schema(path: str, response: object) -> bool:
    status = getattr(response, "status_code", 0)
    if status not in (400, 422):
        return False
    try:
        error = response.json()["error"]  # type: ignore[attr-defined]
    except Exception:
        return False
    kind, field = error.get("type"), error.get("field")
    if "code" in error:  # the OpenAI shape
        kind, field = error.get("code"), error.get("param")
    return any(
        where in ("*", path) and kind == want and re.fullmatch(pattern, field or "")
        for where, want, pattern in BEYOND
    )


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("role", ["admin", None])
@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: op.label)
def test_schema_says_what_validation_enforces(
    keyed_server: Server, operation, role: str | None, mode: GenerationMode
) -> None:  # type: ignore[no-untyped-def]
    failures: list[str] = []
    beyond = 0
    headers = keyed_server.headers(role) if role else {}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
        phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    def run(case: schemathesis.Case) -> None:
        nonlocal beyond
        response = case.call(base_url=keyed_server.url, headers=headers)
        excluded = []
        if _beyond_schema(operation.path, response):
            beyond += 1
            excluded.append(positive_data_acceptance)
        try:
            case.validate_response(response, headers=headers, excluded_checks=excluded)
        except Exception as exc:  # collect, so one report shows every distinct failure
            failures.append(str(exc)[:1500])

    try:
        run()
    except Unsatisfiable:  # negative mode: the operation has nothing a request could violate
        assert mode == GenerationMode.NEGATIVE
        return
    report(
        "schema_precision", operation=operation.label, role=role or "none", mode=str(mode),
        failures=len(failures), beyond_schema=beyond,
    )  # fmt: skip
    assert not failures, "\n\n".join(sorted(set(failures))[:5])
