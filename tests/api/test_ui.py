"""The pair viewer over HTTP (in-process): the page and its files, its data endpoint's numbers
against an independent computation (numpy, statistics), bad input, and the bearer key.

The browser itself is driven in `test_ui_browser.py`.
"""

from __future__ import annotations

import io
import re
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from selfreward_vlm.core.schemas import PreferencePair, ResponseScore, SentenceScore
from tests.api.test_service_shell import assert_error, make_client

KEY = "viewer-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
STATIC = Path(__file__).resolve().parents[2] / "service" / "ui" / "static"


def scored_pair(i: int, method: str, iteration: int, images: list[str]) -> PreferencePair:
    """A pair with varied rewards, lengths and sentence scores (the stop step has no text)."""
    rng = np.random.default_rng(i)

    def response(n: int, base: float) -> tuple[str, ResponseScore]:
        sentences = [
            SentenceScore(text=f"Sentence {k} of {i}.", r_t=float(rng.random() * 1e-9),
                          r_i=float(base + rng.normal() * 4), reward=float(base + rng.normal()))
            for k in range(n)
        ] + [SentenceScore(text="", r_t=0.5, r_i=0.0, reward=0.05)]  # fmt: skip
        text = " ".join(s.text for s in sentences if s.text)
        return text, ResponseScore(reward=sum(s.reward or 0 for s in sentences),
                                   sentences=sentences if method == "csr" else [])  # fmt: skip

    chosen, c_score = response(1 + i % 4, 20 + iteration * 3)
    rejected, r_score = response(1 + (i * 7) % 5, 14 + iteration * 4)
    return PreferencePair(
        id=f"{method}-{iteration}-{i}", prompt_id=f"q{i}", prompt="Describe the image.",
        chosen=chosen, rejected=rejected, images=images, method=method, iteration=iteration,
        chosen_score=c_score, rejected_score=r_score,
    )  # fmt: skip


def png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """An in-process app with a key and a dataset of csr (iterations 1, 2) and sbspo pairs."""
    with make_client(tmp_path_factory.mktemp("ui"), api_key=KEY) as client:
        image = client.post("/v1/images", content=png((200, 40, 40)), headers={
            **AUTH, "content-type": "image/png"}).json()["id"]  # fmt: skip
        pairs = [scored_pair(i, "csr", 1 + i % 2, [image]) for i in range(30)]
        pairs += [scored_pair(i, "sbspo", 1, []) for i in range(30, 42)]
        body = {"pairs": [p.model_dump(mode="json") for p in pairs]}
        assert client.post("/v1/datasets/mix/pairs", json=body, headers=AUTH).status_code == 200
        yield client, pairs, image


def test_page_and_files_are_served_without_the_key(served) -> None:
    client, _, _ = served
    page = client.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    referenced = re.findall(r'(?:src|href)="ui/static/([^"]+)"', page.text)
    assert {"app.js", "ui.css", "favicon.svg"} <= set(referenced)
    # Every file the page or a module imports is served, with a type a browser will run.
    scripts = {p.name for p in STATIC.glob("*.js")}
    for js in scripts:
        for imported in re.findall(r"from '\./([^']+)'", (STATIC / js).read_text()):
            assert imported in scripts, f"{js} imports missing {imported}"
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    for name in {*referenced, *scripts}:
        r = client.get(f"/ui/static/{name}")
        assert r.status_code == 200, name
        assert r.headers["content-type"].startswith(types[Path(name).suffix]), name
        assert r.content == (STATIC / name).read_bytes()
    assert_error(client.get("/ui/static/nope.js"), 404, "not_found", "name")
    assert_error(client.get("/ui/static/..%2Fstatic%2Findex.html"), 404, "not_found")
    slash = client.get("/ui/", follow_redirects=False)
    assert slash.status_code == 308 and slash.headers["location"] == "../ui"


def test_data_calls_need_the_key(served) -> None:
    client, _, image = served
    for path in ("/v1/datasets", "/v1/datasets/mix/pairs?limit=5", "/v1/datasets/mix/summary",
                 f"/v1/images/{image}"):  # fmt: skip
        assert_error(client.get(path), 401, "unauthorized", "authorization")
        wrong = client.get(path, headers={"Authorization": "Bearer wrong"})
        assert_error(wrong, 401, "unauthorized")
        assert client.get(path, headers=AUTH).status_code == 200, path


def test_the_viewer_never_parses_data_as_markup() -> None:
    """The page inserts text only with textContent / text nodes: no HTML sinks anywhere."""
    sinks = ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(",
             "new Function", "DOMParser", "createContextualFragment")  # fmt: skip
    for js in STATIC.glob("*.js"):
        text = js.read_text()
        for sink in sinks:
            assert sink not in text, f"{js.name} uses {sink}"
    assert "<script>" not in (STATIC / "index.html").read_text()  # no inline script (CSP)


def _r_i(score: ResponseScore) -> float | None:
    values = [s.r_i for s in score.sentences if s.text and s.r_i is not None]
    return statistics.fmean(values) if values else None


def test_summary_numbers_match_an_independent_computation(served) -> None:
    client, pairs, _ = served
    s = client.get("/v1/datasets/mix/summary?method=csr&bins=7", headers=AUTH).json()
    assert s["total"] == len(pairs) and s["method"] == "csr"
    assert s["methods"] == {"csr": 30, "sbspo": 12}
    assert s["iterations"] == {"1": 27, "2": 15}
    csr = [p for p in pairs if p.method == "csr"]
    assert s["pairs"] == len(csr)

    for g in s["groups"]:
        group = [p for p in pairs if (p.method, p.iteration) == (g["method"], g["iteration"])]
        assert g["pairs"] == len(group)
        assert g["chosen_reward"] == pytest.approx(
            statistics.fmean(p.chosen_score.reward for p in group)
        )
        assert g["margin"] == pytest.approx(statistics.fmean(
            p.chosen_score.reward - p.rejected_score.reward for p in group))  # fmt: skip
        assert g["rejected_words"] == pytest.approx(
            statistics.fmean(len(p.rejected.split()) for p in group)
        )
        r_i = [v for p in group if (v := _r_i(p.chosen_score)) is not None]
        assert g["chosen_r_i"] == (pytest.approx(statistics.fmean(r_i)) if r_i else None)

    values = {
        "reward": lambda p, side: getattr(p, f"{side}_score").reward,
        "r_i": lambda p, side: _r_i(getattr(p, f"{side}_score")),
        "words": lambda p, side: len(getattr(p, side).split()),
    }
    for q, value in values.items():
        everything = [value(p, side) for p in csr for side in ("chosen", "rejected")]
        for d in s["distributions"]:
            h = d[q]
            edges = np.array(h["edges"])
            # Edges are shared by every iteration and span every value of the method.
            assert edges[0] <= min(everything) and edges[-1] >= max(everything)
            group = [p for p in csr if p.iteration == d["iteration"]]
            for side in ("chosen", "rejected"):
                xs = [value(p, side) for p in group]
                # numpy.histogram: same convention (half-open bins, last one closed).
                assert h[side] == np.histogram(xs, bins=edges)[0].tolist(), (q, side)
                assert h[f"{side}_mean"] == pytest.approx(statistics.fmean(xs))
    words = s["distributions"][0]["words"]["edges"]
    assert all(float(e).is_integer() for e in words)  # no bin splits a word count

    sbspo = client.get("/v1/datasets/mix/summary?method=sbspo", headers=AUTH).json()
    assert [d["r_i"] for d in sbspo["distributions"]] == [None]  # no sentence scores
    assert sbspo["distributions"][0]["reward"]["chosen_mean"] == pytest.approx(
        statistics.fmean(p.chosen_score.reward for p in pairs if p.method == "sbspo")
    )


def test_summary_bad_input(served) -> None:
    client, _, _ = served
    get = lambda path: client.get(path, headers=AUTH)  # noqa: E731
    assert_error(get("/v1/datasets/none/summary"), 404, "not_found", "name")
    assert_error(get("/v1/datasets/mix/summary?bins=0"), 422, "invalid_request", "bins")
    assert_error(get("/v1/datasets/mix/summary?bins=x"), 422, "invalid_request", "bins")
    assert_error(get("/v1/datasets/-bad/summary"), 422, "invalid_request", "name")
    empty = get("/v1/datasets/mix/summary?method=nobody").json()
    assert empty["pairs"] == 0 and empty["distributions"] == [] and empty["total"] == 42


def test_summary_is_cached_until_the_dataset_grows(served, monkeypatch) -> None:
    """The viewer reloads the summary often: the dataset is read again only once it changed
    (or for other parameters), and the cached answer equals a fresh one."""
    client, _, image = served
    store = client.app.state.selfreward.store
    reads: list[str] = []
    real = store.iter_pairs

    def counted(name: str, *args: Any) -> Any:
        reads.append(name)
        return real(name, *args)

    monkeypatch.setattr(store, "iter_pairs", counted)

    def add(pairs: list[PreferencePair]) -> None:
        body = {"pairs": [p.model_dump(mode="json") for p in pairs]}
        assert client.post("/v1/datasets/grow/pairs", json=body, headers=AUTH).status_code == 200

    def summary(query: str = "") -> dict:
        res = client.get(f"/v1/datasets/grow/summary{query}", headers=AUTH)
        assert res.status_code == 200, res.text
        return res.json()

    add([scored_pair(i, "csr", 1, [image]) for i in range(3)])
    first = summary()
    assert summary() == first and first["total"] == 3 and reads == ["grow"]
    add([scored_pair(i, "csr", 2, [image]) for i in range(3, 5)])
    assert summary()["total"] == 5 and len(reads) == 2
    assert summary("?bins=4")["total"] == 5 and len(reads) == 3
    assert_error(client.get("/v1/datasets/nothing/summary", headers=AUTH), 404, "not_found")


def test_openapi_documents_the_summary_not_the_page(served) -> None:
    client, _, _ = served
    paths = client.get("/openapi.json").json()["paths"]
    op = paths["/v1/datasets/{name}/summary"]["get"]
    assert op["security"] and "401" in op["responses"] and "404" in op["responses"]
    assert not any(p.startswith("/ui") for p in paths)


def test_summary_of_equal_values_and_of_nothing() -> None:
    """One value everywhere still gives a drawable histogram; no pairs give none."""
    from selfreward_vlm.service.ui.summary import summarize

    pairs = [scored_pair(i, "sbspo", 3, []) for i in range(4)]
    for p in pairs:
        p.chosen_score.reward = p.rejected_score.reward = 2.5
    (d,) = summarize("same", pairs, bins=5).distributions
    assert d.reward is not None
    assert d.reward.edges == pytest.approx([2.0, 2.2, 2.4, 2.6, 2.8, 3.0])
    assert d.reward.chosen == d.reward.rejected == [0, 0, 4, 0, 0]
    assert d.r_i is None  # no sentence scores (SBSPO)
    empty = summarize("none", [])
    assert (empty.total, empty.groups, empty.distributions) == (0, [], [])
