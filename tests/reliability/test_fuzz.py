"""Schema fuzzing: Schemathesis drives every operation of openapi/openapi.json against a live
server on loopback (native and compatibility routes alike).

For each generated request: no 5xx, the status code is documented, the body matches the
documented schema and content type, a schema-invalid request is refused with a 4xx, and a
request without a valid token is a 401. Schema-valid requests may still be refused (an
unknown image id, a limit): the service validates more than the schema says, so that check is
left out. Afterwards the service scores fixed inputs to the same numbers as before.

Examples per operation: `SELFREWARD_FUZZ_EXAMPLES` (CI: 6; `make fuzz`: 200).
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.reliability import (
    OPENAPI,
    Server,
    keyed_server,
    reference_numbers,
    report,
    upload_png,
)

__all__ = ["keyed_server"]  # the session fixture, imported so pytest finds it here

EXAMPLES = int(os.environ.get("SELFREWARD_FUZZ_EXAMPLES", "6"))
SCHEMA = schemathesis.openapi.from_dict(OPENAPI)
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]


@pytest.fixture(scope="module")
def before(keyed_server: Server) -> tuple[str, dict[str, list[float]]]:
    """An image and the numbers the service gives for fixed inputs before any fuzzing."""
    image_id = upload_png(keyed_server)
    return image_id, reference_numbers(keyed_server, image_id)


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: op.label)
def test_fuzz_operation(keyed_server: Server, before: object, operation) -> None:  # type: ignore[no-untyped-def]
    failures: list[str] = []
    statuses: list[int] = []

    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
        phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    def run(case: schemathesis.Case) -> None:
        try:
            response = case.call_and_validate(
                base_url=keyed_server.url,
                headers=keyed_server.headers("admin"),
                excluded_checks=[positive_data_acceptance],
            )
            statuses.append(response.status_code)
        except Exception as exc:  # collect, so one report shows every distinct failure
            failures.append(str(exc)[:1500])

    run()
    report(
        "fuzz", operation=operation.label, cases=len(statuses) + len(failures),
        failures=len(failures), server_errors=sum(s >= 500 for s in statuses),
    )  # fmt: skip
    assert not failures, "\n\n".join(sorted(set(failures))[:5])


def test_service_scores_the_same_after_fuzzing(
    keyed_server: Server, before: tuple[str, dict[str, list[float]]]
) -> None:
    image_id, numbers = before
    assert keyed_server.proc.poll() is None, "the server died"
    after = reference_numbers(keyed_server, image_id)
    for key, values in numbers.items():
        assert after[key] == pytest.approx(values, abs=1e-5), key
