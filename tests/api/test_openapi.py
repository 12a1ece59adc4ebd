"""The committed `openapi/openapi.json` is what the app serves (regenerate when it is not)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "openapi" / "openapi.json"
REGENERATE = ".venv/bin/python scripts/gen_openapi.py"


def _render() -> str:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from gen_openapi import render_openapi
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return render_openapi()


def test_committed_openapi_is_current() -> None:
    assert COMMITTED.is_file(), f"openapi/openapi.json is missing; run `{REGENERATE}`"
    current = _render()
    assert json.loads(COMMITTED.read_text(encoding="utf-8")) == json.loads(current), (
        f"openapi/openapi.json is stale; run `{REGENERATE}` and commit the result"
    )


def test_openapi_documents_the_contract() -> None:
    schema = json.loads(_render())
    paths = schema["paths"]
    for path in (
        "/health", "/ready", "/metrics", "/info", "/v1/images", "/v1/images/{image_id}",
        "/v1/datasets", "/v1/datasets/{name}/pairs", "/v1/adapters", "/v1/adapters/{name}",
    ):  # fmt: skip
        assert path in paths, path
    upload = paths["/v1/images"]["post"]["requestBody"]["content"]
    assert {"image/*", "application/octet-stream", "multipart/form-data"} <= set(upload)
    adapter_form = paths["/v1/adapters"]["post"]["requestBody"]["content"]["multipart/form-data"]
    ref = adapter_form["schema"]["$ref"].rsplit("/", 1)[1]
    fields = schema["components"]["schemas"][ref]["properties"]
    assert set(fields) == {"name", "adapter_config.json", "adapter_model.safetensors"}
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    assert paths["/v1/datasets"]["get"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in paths["/health"]["get"]
