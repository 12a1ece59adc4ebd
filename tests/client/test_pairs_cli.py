"""`selfreward pairs` (client.cli / client.pairs): resume after kill -9 and Ctrl-C, bad images,
publishing. A small deterministic fake service (stdlib HTTP server in a thread, 30 ms per
request) keeps these independent of the model layer; a slow variant runs on the real service."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from selfreward_vlm.client.journal import OutputMismatchError, PairsJournal
from selfreward_vlm.client.pairs import parse_publish, run_pairs

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


def _h(*parts: Any) -> int:
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:8], 16)


def fake_generate(req: dict[str, Any]) -> list[dict[str, Any]]:
    """Deterministic candidates: sentences at depth < 2, then EOS-only and finished ones."""
    n, prefix = req.get("n", 5), req.get("prefix", "")
    if req.get("stop") == "eos":
        seed = req.get("seed") or 0
        texts = [f" sample {(seed + i) % 4} of {req['prompt'][:12]}" for i in range(n)]
        return [_cand(t, True, -0.1 * (1 + (seed + i) % 4)) for i, t in enumerate(texts)]
    depth = prefix.count(".")
    out = []
    for j in range(n):
        text = f" obj{_h(req['prompt'], prefix, j) % 97} at {depth}."
        if depth >= 2 and j == 0:
            text = ""
        out.append(_cand(text, depth >= 3 or (depth >= 2 and j < 2), -0.2 * (j + 1)))
    return out


def _cand(text: str, finished: bool, lp: float) -> dict[str, Any]:
    k = max(1, len(text.split()))
    return {"text": text, "token_ids": list(range(k)), "token_logprobs": [lp] * k,
            "finished": finished, "stop_reason": "eos" if finished else "sentence"}  # fmt: skip


class FakeService(BaseHTTPRequestHandler):
    delay = 0.03
    store: ClassVar[dict[str, dict[str, Any]]] = {}
    uploads: ClassVar[list[str]] = []

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send(200, {"status": "ok"})

    def do_POST(self) -> None:
        time.sleep(self.delay)
        raw = self.rfile.read(int(self.headers.get("content-length", 0)))
        path = self.path
        if path == "/v1/images":
            if not raw.startswith(b"\x89PNG"):
                err = {"type": "invalid_image", "message": "not an image", "field": "body"}
                return self._send(422, {"error": err})
            self.uploads.append(hashlib.sha256(raw).hexdigest())
            return self._send(200, {"id": hashlib.sha256(raw).hexdigest(), "width": 1, "height": 1})
        req = json.loads(raw)
        if path == "/v1/generate":
            return self._send(200, {"model": "base", "candidates": fake_generate(req), "usage": {}})
        if path == "/v1/clip":
            res = [{"text": t, "cosine": (_h(t) % 60 - 20) / 100, "truncated": False,
                    "relevance": max(_h(t) % 60 - 20, 0)} for t in req["texts"]]  # fmt: skip
            return self._send(200, {"results": res, "usage": {}})
        if path == "/v1/implicit-reward":
            res = [{"text": t, "reward_sum": (_h(t) % 50) / 10, "reward_avg": (_h(t, 1) % 50) / 100,
                    "policy_logprob": -1.0, "reference_logprob": -1.0, "num_tokens": 4}
                   for t in req["responses"]]  # fmt: skip
            return self._send(200, {"policy": req["policy"], "reference": "base", "beta": 0.1,
                                    "results": res, "usage": {}})  # fmt: skip
        if path.startswith("/v1/datasets/"):
            new = [p for p in req["pairs"] if p["id"] not in self.store]
            self.store.update({p["id"]: p for p in req["pairs"]})
            dup = len(req["pairs"]) - len(new)
            body = {"dataset": path.split("/")[3], "inserted": len(new), "duplicates": dup,
                    "total": len(self.store)}  # fmt: skip
            return self._send(200, body)
        self._send(404, {"error": {"type": "not_found", "message": path}})


@contextlib.contextmanager
def serve() -> Iterator[str]:
    """A FakeService on a free loopback port (all instances share `store` and `uploads`)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def fake_service() -> Iterator[str]:
    FakeService.store, FakeService.uploads = {}, []
    with serve() as url:
        yield url


def write_prompts(tmp: Path, n: int, bad: bool = False) -> tuple[Path, Path]:
    images = tmp / "images"
    images.mkdir(exist_ok=True)
    lines = []
    for i in range(n):
        (images / f"{i}.png").write_bytes(PNG + bytes([i % 7]))
        lines.append({"id": f"q{i}", "image": f"{i}.png", "prompt": f"Describe image {i}."})
    if bad:
        (images / "broken.png").write_bytes(b"not an image at all")
        lines += [{"id": "missing", "image": "nope.png", "prompt": "x"},
                  {"id": "broken", "image": "broken.png", "prompt": "y"}]  # fmt: skip
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return prompts, images


def cli(url: str, prompts: Path, images: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "selfreward_vlm.client.cli", "pairs", "--service", url,
            "--prompts", str(prompts), "--images", str(images), "--out", str(out),
            "--quiet", *extra]  # fmt: skip


def read_pairs(out: Path) -> list[dict[str, Any]]:
    text = out.read_text()
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]  # every line is whole JSON


def wait_for_done(out: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    done = Path(str(out) + ".done")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done.exists() and done.read_text().count("\n") >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise TimeoutError("the run made no progress")


def env() -> dict[str, str]:
    """The CLI's environment; a wide terminal, so rich does not wrap the messages checked."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "COLUMNS": "1000"}


@pytest.mark.parametrize("method", ["csr", "sbspo"])
def test_kill_9_then_resume_gives_each_prompt_once(
    tmp_path: Path, fake_service: str, method: str
) -> None:
    prompts, images = write_prompts(tmp_path, 16)
    reference = tmp_path / "reference.jsonl"
    policy = "pol" if method == "sbspo" else "base"  # sbspo refuses policy == reference
    summary = run_pairs(fake_service, method, prompts, images, reference, progress=False,
                        model=policy)  # fmt: skip
    assert summary.prompts_done == 16 and summary.pairs_total > 0
    out = tmp_path / "pairs.jsonl"
    cmd = cli(fake_service, prompts, images, out, "--method", method, "--concurrency", "3",
              "--model", policy)  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    wait_for_done(out, 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with out.open("a") as f:  # as if killed in the middle of a line
        f.write('{"id": "torn", "prompt_id": "q15", "chosen": "tru')
    assert 3 <= len(PairsJournal(out).recover()) < 16
    rerun = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    got, want = read_pairs(out), read_pairs(reference)
    assert len({p["id"] for p in got}) == len(got)  # no pair twice
    assert sorted(p["id"] for p in got) == sorted(p["id"] for p in want)
    done = [json.loads(x) for x in Path(str(out) + ".done").read_text().splitlines()]
    assert sorted(d["prompt_id"] for d in done) == sorted(f"q{i}" for i in range(16))


def test_ctrl_c_exits_cleanly_and_resumes(tmp_path: Path, fake_service: str) -> None:
    prompts, images = write_prompts(tmp_path, 16)
    out = tmp_path / "pairs.jsonl"
    cmd = cli(fake_service, prompts, images, out, "--method", "csr", "--concurrency", "2")
    pipe = subprocess.PIPE
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=pipe, stderr=pipe, text=True)
    wait_for_done(out, 2, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Rerun the same command to resume" in " ".join(err.split())  # rich wraps lines
    read_pairs(out)
    summary = run_pairs(fake_service, "csr", prompts, images, out, progress=False)
    assert summary.prompts_resumed >= 2
    assert summary.prompts_resumed + summary.prompts_done == 16


def test_bad_images_are_skipped_reported_and_not_retried(tmp_path: Path, fake_service: str) -> None:
    prompts, images = write_prompts(tmp_path, 3, bad=True)
    out = tmp_path / "pairs.jsonl"
    summary = run_pairs(fake_service, "csr", prompts, images, out, progress=False)
    assert summary.prompts_skipped == 2 and summary.prompts_failed == 0
    assert summary.stats["generate_calls"] >= 3 and summary.stats["steps"] >= 3
    assert set(summary.skipped) == {"missing", "broken"}
    assert (
        "not found" in summary.skipped["missing"] and "invalid_image" in summary.skipped["broken"]
    )
    assert summary.means["chosen_reward"] is not None
    assert summary.means["chosen_reward"] >= summary.means["rejected_reward"]
    done = {
        d["prompt_id"]: d for d in map(json.loads, Path(f"{out}.done").read_text().splitlines())
    }
    assert done["broken"]["status"] == "skipped" and done["q0"]["status"] in {"ok", "nopair"}
    uploads = len(FakeService.uploads)
    again = run_pairs(fake_service, "csr", prompts, images, out, progress=False)
    assert again.prompts_done == 0 and again.prompts_resumed == 5
    assert len(FakeService.uploads) == uploads


def test_publish_posts_each_prompts_pairs(tmp_path: Path, fake_service: str) -> None:
    prompts, images = write_prompts(tmp_path, 4)
    out = tmp_path / "pairs.jsonl"
    target = f"{fake_service}/v1/datasets/demo"
    cmd = cli(fake_service, prompts, images, out, "--method", "sbspo", "--publish", target,
              "--model", "pol", "--iteration", "1")  # fmt: skip
    res = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    pairs = read_pairs(out)
    assert pairs and {p["id"] for p in pairs} == set(FakeService.store)
    assert all(p["model"] == "pol" and p["iteration"] == 1 for p in pairs)


def test_publish_to_another_store_uploads_images_there(tmp_path: Path, fake_service: str) -> None:
    prompts, images = write_prompts(tmp_path, 3)
    with serve() as other:
        summary = run_pairs(fake_service, "sbspo", prompts, images, tmp_path / "o.jsonl",
                            publish=f"{other}/v1/datasets/x", progress=False,
                            model="pol")  # fmt: skip
    assert summary.pairs_total == len(FakeService.store) > 0
    assert len(FakeService.uploads) == 6  # each image on the search service and on the store


def test_cli_rejects_options_foreign_to_the_method(tmp_path: Path, fake_service: str) -> None:
    prompts, images = write_prompts(tmp_path, 1)
    cmd = cli(fake_service, prompts, images, tmp_path / "o.jsonl", "--method", "sbspo",
              "--keep-top", "3")  # fmt: skip
    res = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "keep_top" in res.stderr


def test_resume_refuses_other_settings(tmp_path: Path, fake_service: str) -> None:
    prompts, images = write_prompts(tmp_path, 2)
    out = tmp_path / "pairs.jsonl"
    run_pairs(fake_service, "sbspo", prompts, images, out, progress=False, model="pol")
    with pytest.raises(OutputMismatchError, match="sbspo"):
        run_pairs(fake_service, "sbspo", prompts, images, out, progress=False, iteration=1,
                  model="pol")  # fmt: skip
    cmd = cli(fake_service, prompts, images, out, "--method", "csr")
    res = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "another output file" in " ".join(res.stderr.split())


def test_parse_publish_forms() -> None:
    assert parse_publish("http://h:1/v1/datasets/d", ["x"]) == (["http://h:1"], "d")
    assert parse_publish("http://h:1/api/v1/datasets/d/pairs", ["x"]) == (["http://h:1/api"], "d")
    assert parse_publish("http://h:1/d", ["x"]) == (["http://h:1"], "d")
    assert parse_publish("mine", ["http://svc"]) == (["http://svc"], "mine")


@pytest.mark.slow
def test_kill_and_resume_on_the_real_service(tmp_path: Path, live_server: str) -> None:
    prompts, images = write_prompts(tmp_path, 0)
    from PIL import Image

    lines = []
    for i in range(8):
        Image.new("RGB", (32, 32), (30 * i, 100, 200)).save(images / f"r{i}.png")
        lines.append({"id": f"r{i}", "image": f"r{i}.png", "prompt": "Describe the image."})
    prompts.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "pairs.jsonl"
    cmd = cli(live_server, prompts, images, out, "--method", "csr", "--max-steps", "3",
              "--max-new-tokens", "8", "--concurrency", "2")  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    wait_for_done(out, 1, proc, timeout=300)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rerun = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    pairs = read_pairs(out)
    assert len({p["prompt_id"] for p in pairs}) == len(pairs)  # csr: at most one pair a prompt
    done = Path(f"{out}.done").read_text().splitlines()
    assert sorted(json.loads(d)["prompt_id"] for d in done) == sorted(x["id"] for x in lines)


def test_method_options_are_config_fields() -> None:
    """Each line of `client.cli.METHOD_OPTIONS` (a `pairs` flag) names a field of a method's
    config dataclass, which `build_config` receives by that name."""
    import dataclasses

    from selfreward_vlm.client.cli import METHOD_OPTIONS
    from selfreward_vlm.client.methods import METHODS

    fields = {f.name for spec in METHODS.values() for f in dataclasses.fields(spec.config_cls)}
    assert {p.name for p in METHOD_OPTIONS} <= fields
