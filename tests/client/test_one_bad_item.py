"""One bad item never stops a long run (`selfreward pairs`, and so `selfreward iterate`).

Measured before: one prompt whose search passed the service's token limit got a 422, `pairs`
left it without any record and `iterate` aborted; a rerun failed the same way. Now:
- a search path that reaches the token budget ends as `length` (real service, tiny VLM);
- a deterministic 4xx for one prompt is recorded as `skipped` with its reason; the run goes
  on and a rerun does not ask again;
- a transient error (504) leaves the prompt undone: the summary counts it, the command exits
  non-zero, and a rerun finishes it.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

from selfreward_vlm.client.methods.csr import CSRConfig
from selfreward_vlm.client.pairs import run_pairs
from tests.client.test_pairs_cli import PNG, FakeService, cli, env


class FlakyService(FakeService):
    """The fake service, refusing prompts that say BAD (422 naming `prompt`, every time) and,
    while `flaky`, timing out those that say FLAKY (504)."""

    flaky: ClassVar[bool] = True
    generate_prompts: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        if self.path == "/v1/generate":
            length = int(self.headers.get("content-length", 0))
            req = json.loads(self.rfile.read(length))
            self.generate_prompts.append(req["prompt"])
            if "BAD" in req["prompt"]:
                err = {"type": "invalid_request", "message": "no", "field": "prompt"}
                return self._send(422, {"error": err})
            if "FLAKY" in req["prompt"] and self.flaky:
                err = {"type": "deadline_exceeded", "message": "too slow", "field": None}
                return self._send(504, {"error": err})
            self.rfile = _Replay(json.dumps(req).encode())  # let the parent answer it
            self.headers.replace_header("content-length", str(len(json.dumps(req))))
        elif self.path.startswith("/v1/datasets/"):
            length = int(self.headers.get("content-length", 0))
            req = json.loads(self.rfile.read(length))
            prompts = {p["prompt"] for p in req["pairs"]}
            if "Store refuses: describe." in prompts:
                err = {"type": "invalid_request", "message": "no", "field": "pairs"}
                return self._send(422, {"error": err})
            if "Store slow: describe." in prompts and self.flaky:
                err = {"type": "deadline_exceeded", "message": "too slow", "field": None}
                return self._send(504, {"error": err})
            self.rfile = _Replay(json.dumps(req).encode())
            self.headers.replace_header("content-length", str(len(json.dumps(req))))
        return super().do_POST()


class _Replay:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, n: int) -> bytes:
        return self.data[:n]

    def close(self) -> None:  # the handler closes its rfile when done
        pass


@contextlib.contextmanager
def flaky_service() -> Iterator[str]:
    FlakyService.store, FlakyService.uploads, FlakyService.generate_prompts = {}, [], []
    FlakyService.flaky = True
    server = ThreadingHTTPServer(("127.0.0.1", 0), FlakyService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _prompts(tmp: Path, texts: dict[str, str]) -> tuple[Path, Path]:
    images = tmp / "images"
    images.mkdir(exist_ok=True)
    lines = []
    for i, (pid, text) in enumerate(texts.items()):
        (images / f"{i}.png").write_bytes(PNG + bytes([i]))
        lines.append(json.dumps({"id": pid, "image": f"{i}.png", "prompt": text}))
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("\n".join(lines) + "\n")
    return prompts, images


def _done(out: Path) -> dict[str, dict]:
    lines = Path(f"{out}.done").read_text().splitlines()
    return {r["prompt_id"]: r for r in map(json.loads, lines)}


def test_bad_prompt_is_skipped_transient_one_left_undone_and_exit_is_nonzero(
    tmp_path: Path,
) -> None:
    texts = {f"q{i}": f"Describe image {i}." for i in range(3)}
    texts |= {"bad": "BAD prompt", "flaky": "FLAKY prompt"}
    prompts, images = _prompts(tmp_path, texts)
    out = tmp_path / "pairs.jsonl"
    with flaky_service() as url:
        first = subprocess.run(
            cli(url, prompts, images, out, "--method", "csr"),
            env=env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert first.returncode == 3, first.stdout + first.stderr
        done = _done(out)
        assert set(done) == {"q0", "q1", "q2", "bad"}  # flaky: no record, a rerun retries it
        assert done["bad"]["status"] == "skipped" and "422" in done["bad"]["reason"]
        report = first.stdout + first.stderr
        assert "1 × 422 invalid_request (prompt)" in report
        assert "1 × 504 deadline_exceeded" in report
        bad_asks = FlakyService.generate_prompts.count("BAD prompt")

        FlakyService.flaky = False
        second = subprocess.run(
            cli(url, prompts, images, out, "--method", "csr"),
            env=env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert second.returncode == 0, second.stdout + second.stderr
        assert set(_done(out)) == set(texts)
        assert FlakyService.generate_prompts.count("BAD prompt") == bad_asks  # not retried


def test_a_refused_publish_skips_or_fails_that_prompt_only(tmp_path: Path) -> None:
    """Review finding 2: one failed upsert used to end the whole run (and cancel every
    prompt in flight); it now sorts like a refused generation."""
    texts = {f"q{i}": f"Describe image {i}." for i in range(3)}
    texts |= {"pubbad": "Store refuses: describe.", "pubflaky": "Store slow: describe."}
    prompts, images = _prompts(tmp_path, texts)
    out = tmp_path / "pairs.jsonl"
    with flaky_service() as url:
        summary = run_pairs(url, "csr", prompts, images, out, publish="d", progress=False)
        assert summary.prompts_failed == 1 and "504" in summary.failed["pubflaky"]
        done = _done(out)
        assert set(done) == {"q0", "q1", "q2", "pubbad"}
        assert done["pubbad"]["status"] == "skipped" and "422" in done["pubbad"]["reason"]
        assert {p["prompt_id"] for p in FlakyService.store.values()} == {"q0", "q1", "q2"}
        FlakyService.flaky = False
        again = run_pairs(url, "csr", prompts, images, out, publish="d", progress=False)
        assert again.prompts_failed == 0 and again.prompts_done == 1
        assert "pubflaky" in {p["prompt_id"] for p in FlakyService.store.values()}


def test_search_reaching_the_token_budget_ends_as_length(tmp_path: Path, live_server: str) -> None:
    texts = {"short": "Describe the image.", "long": "word " * 2100, "also": "What is it?"}
    prompts, images = _prompts(tmp_path, texts)
    from PIL import Image

    for i in range(len(texts)):  # real images for the real service
        Image.new("RGB", (32, 32), (40 * i, 90, 200)).save(images / f"{i}.png")
    config = CSRConfig(num_candidates=2, num_beam_groups=2, max_steps=2, max_new_tokens=8)
    summary = run_pairs(
        live_server, "csr", prompts, images, tmp_path / "out.jsonl", config=config,
        progress=False,
    )  # fmt: skip
    assert summary.prompts_failed == 0 and summary.prompts_done == 3
    done = _done(tmp_path / "out.jsonl")
    assert set(done) == set(texts)
    assert done["long"]["status"] in ("nopair", "skipped")
    assert summary.stats.get("token_budget_reached", 0) >= 1
