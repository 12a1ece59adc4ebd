"""Auth everywhere: walk every operation of openapi/openapi.json against a server with keys.

A new route is in the OpenAPI document (a test fails when it is stale), so it is walked here
without anyone remembering to add it: every operation but the probes answers 401 without a
token and with a wrong one, compatibility routes (/get_reward, /v1/completions, /v1/score)
included. The read-only key may score but not write; the admin key alone may change adapters
and delete datasets. No key ever shows up in /info or in the server's log.
"""

from __future__ import annotations

import httpx
import pytest

from selfreward_vlm.service.http.auth import access_level
from tests.reliability import KEYS, Server, concrete, keyed_server, operations

__all__ = ["keyed_server"]  # the session fixture, imported so pytest finds it here

OPEN = {"/health", "/ready", "/info", "/metrics"}
OPS = list(operations())


def test_the_walk_covers_native_and_compatibility_routes() -> None:
    paths = {path for _, path, _ in OPS}
    assert {"/v1/reward", "/v1/generate", "/v1/adapters", "/v1/datasets"} <= paths
    assert paths >= OPEN
    # Compatibility routes, when present, are walked like the rest (nothing special-cased).
    assert all(access_level(m, p) != "open" for m, p, _ in OPS if p not in OPEN)


@pytest.mark.parametrize(("method", "path"), [(m, p) for m, p, _ in OPS], ids=str)
def test_every_route_but_the_probes_needs_a_token(
    keyed_server: Server, method: str, path: str
) -> None:
    url = keyed_server.url + concrete(path)
    no_token = httpx.request(method, url, timeout=30)
    wrong = httpx.request(method, url, headers={"authorization": "Bearer nope"}, timeout=30)
    if path in OPEN:
        assert no_token.status_code == 200, no_token.text
        return
    for r in (no_token, wrong):
        assert r.status_code == 401, f"{method} {path}: {r.status_code} {r.text}"
        assert r.json()["error"]["field"] == "authorization"
        assert r.headers["www-authenticate"] == "Bearer"
    # With the right key the request gets past auth (whatever the handler then says).
    ok = httpx.request(method, url, headers=keyed_server.headers("admin"), timeout=60)
    assert ok.status_code not in (401, 403), f"{method} {path}: {ok.text}"


def test_the_ui_page_is_open_but_its_data_is_not(keyed_server: Server) -> None:
    page = httpx.get(f"{keyed_server.url}/ui", timeout=30)
    if page.status_code == 404:
        pytest.skip("no /ui page in this build")
    assert page.status_code == 200
    ui_data = [p for m, p, op in OPS if "ui" in op.get("tags", []) and m == "GET"]
    for path in ui_data:
        r = httpx.get(keyed_server.url + concrete(path), timeout=30)
        assert r.status_code == 401, path


def test_read_key_scores_but_cannot_write(keyed_server: Server) -> None:
    url, read = keyed_server.url, keyed_server.headers("read")
    scored = httpx.post(
        f"{url}/v1/logprobs", headers=read, timeout=60,
        json={"prompt": "Describe.", "continuations": ["A cat."]},
    )  # fmt: skip
    assert scored.status_code == 200, scored.text
    assert httpx.get(f"{url}/v1/datasets", headers=read, timeout=30).status_code == 200
    writes = [
        ("POST", "/v1/datasets/d1/pairs", {"json": {"pairs": []}}),
        ("DELETE", "/v1/datasets/d1", {}),
        ("DELETE", "/v1/adapters/a1", {}),
        ("POST", "/v1/adapters", {"data": {"name": "a1"}}),
    ]
    for method, path, kw in writes:
        r = httpx.request(method, url + path, headers=read, timeout=30, **kw)
        assert r.status_code == 403, (path, r.text)
        assert r.json()["error"]["type"] == "forbidden"


def test_admin_actions_need_the_admin_key(keyed_server: Server) -> None:
    url = keyed_server.url
    api, admin = keyed_server.headers("api"), keyed_server.headers("admin")
    r = httpx.delete(f"{url}/v1/adapters/nosuch", headers=api, timeout=30)
    assert r.status_code == 403 and "admin" in r.json()["error"]["message"]
    assert httpx.delete(f"{url}/v1/adapters/nosuch", headers=admin, timeout=30).status_code == 404
    # The general key still writes pairs (not an admin action).
    pairs = httpx.post(f"{url}/v1/datasets/d2/pairs", headers=api, json={"pairs": []}, timeout=30)
    assert pairs.status_code not in (401, 403), pairs.text


def test_keys_never_leak_into_info_or_logs(keyed_server: Server) -> None:
    info = httpx.get(f"{keyed_server.url}/info", timeout=30).text
    httpx.get(f"{keyed_server.url}/v1/datasets", headers={"authorization": "Bearer nope"})
    log = keyed_server.log.read_text()
    for key in KEYS.values():
        assert key not in info
        assert key not in log
