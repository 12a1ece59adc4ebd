"""The OpenAPI document says what the validation enforces: Schemathesis with every check,
positive and negative data, against a live server, with the admin key and without a key.

Two checks the reliability fuzzer (`test_fuzz.py`) leaves out are the point here: a request
the schema allows must not be refused (`positive_data_acceptance`), and one it forbids must
not be accepted (`negative_data_rejection`). What no JSON Schema can say stays outside, each
named below: whether bytes are an image or an adapter (`invalid_image`, `invalid_adapter`),
and `num_beam_groups` dividing `n`.

The compatibility routes (OpenAI `/v1/completions`, `/v1/chat/completions`, `/v1/models`,
`/v1/score`, `/score`; OpenRLHF
`/get_reward`) are checked by `test_fuzz.py` only: their wire models live with those routes.

Examples per operation and mode: `SELFREWARD_FUZZ_EXAMPLES` (CI: 6; `make fuzz`: 200).
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.reliability import OPENAPI, Server, keyed_server, report

__all__ = ["keyed_server"]

EXAMPLES = int(os.environ.get("SELFREWARD_FUZZ_EXAMPLES", "6"))
FOREIGN = {
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/models",
    "/v1/score",
    "/score",
    "/get_reward",
}
SCHEMA = schemathesis.openapi.from_dict(OPENAPI)
OPERATIONS = [
    op for op in (result.ok() for result in SCHEMA.get_all_operations()) if op.path not in FOREIGN
]
# 422s about what a schema cannot state (see the module doc): error type, or field.
BEYOND_SCHEMA_TYPES = {"invalid_image", "invalid_adapter"}
BEYOND_SCHEMA_FIELDS = {"num_beam_groups"}


def _beyond_schema(response: object) -> bool:
    if getattr(response, "status_code", 0) != 422:
        return False
    try:
        error = response.json()["error"]  # type: ignore[attr-defined]
    except Exception:
        return False
    return error.get("type") in BEYOND_SCHEMA_TYPES or error.get("field") in BEYOND_SCHEMA_FIELDS


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
        if _beyond_schema(response):
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
