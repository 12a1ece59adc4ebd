"""`selfreward eval`: chair and pope end to end against the tiny served model (answers checked
against the model's own transformers `generate`), kill -9 / Ctrl-C and resume (a deterministic
fake service keeps those fast), settings checks, and `eval compare`."""

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
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from typer.testing import CliRunner

from selfreward_vlm.cli import app as root_app
from selfreward_vlm.client.eval import coco
from selfreward_vlm.client.eval.chair_eval import CHAIR_PROMPT, caption_fields, chair_summary
from selfreward_vlm.client.eval.cli import app
from selfreward_vlm.client.eval.compare import compare_rows
from selfreward_vlm.client.eval.object_halbench import HALBENCH_PROMPTS
from selfreward_vlm.client.eval.pope import POPE_SUFFIX, parse_answer, pope_metrics
from tests.client.test_pairs_cli import FakeService

ROOT = Path(__file__).resolve().parents[2]
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
WORDS = ["dog", "cat", "cups", "a man", "hot dogs", "a dining table", "grass"]


def write_coco(tmp: Path, n: int, real_images: bool) -> tuple[Path, Path]:
    """n images (real PNGs, or stub bytes for the fake service) and an instances file."""
    images = tmp / "val2014"
    images.mkdir()
    for i in range(n):
        path = images / f"COCO_val2014_{i:012d}.png"
        if real_images:
            from PIL import Image

            Image.new("RGB", (32, 32), (40 * i % 255, 120, 200 - 20 * i % 200)).save(path)
        else:
            path.write_bytes(PNG + bytes([i]))
    cats = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 47, "name": "cup"}]
    data = {"images": [{"id": i, "file_name": f"COCO_val2014_{i:012d}.png"} for i in range(n)],
            "annotations": [{"image_id": i, "category_id": [1, 18, 47][i % 3]} for i in range(n)],
            "categories": cats}  # fmt: skip
    annotations = tmp / "instances_val2014.json"
    annotations.write_text(json.dumps(data))
    return annotations, images


def write_pope(tmp: Path, split: str, n: int) -> Path:
    path = tmp / f"coco_pope_{split}.json"
    rows = [{"question_id": q, "image": f"COCO_val2014_{q % 4:012d}.png",
             "text": f"Is there a {['dog', 'cup'][q % 2]} in the image?",
             "label": ["yes", "no"][q % 3 % 2]} for q in range(n)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    text = path.read_text()
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


# --- against the tiny served model ---------------------------------------------------------


@pytest.fixture(scope="module")
def direct(tiny_models: dict[str, Path]) -> Any:
    """Greedy answers from the tiny VLM through plain transformers (the independent side)."""
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(str(tiny_models["vlm"])).eval()
    processor = AutoProcessor.from_pretrained(str(tiny_models["vlm"]))
    tok = processor.tokenizer

    def answer(image: Path, prompt: str, max_new_tokens: int) -> str:
        content = [{"type": "image"}, {"type": "text", "text": prompt}]
        text = processor.apply_chat_template([{"role": "user", "content": content}],
                                             add_generation_prompt=True)  # fmt: skip
        enc = processor(text=text, images=Image.open(image).convert("RGB"), return_tensors="pt")
        with torch.no_grad():
            out = model.generate(
                **enc, do_sample=False, max_new_tokens=max_new_tokens,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            )  # fmt: skip
        new = out[0, enc["input_ids"].shape[1] :].tolist()
        return str(tok.decode(new, skip_special_tokens=True)).strip()

    return answer


@pytest.mark.slow
def test_eval_chair_against_the_tiny_service(tmp_path: Path, live_server: str, direct) -> None:
    annotations, images = write_coco(tmp_path, 5, real_images=True)
    out = tmp_path / "chair"
    res = CliRunner().invoke(root_app, [
        "eval", "chair", "--service", live_server, "--annotations", str(annotations),
        "--images", str(images), "--limit", "4", "--max-new-tokens", "8", "--out", str(out),
        "--quiet", "--concurrency", "2",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "CHAIR_S" in res.output
    records = read_jsonl(out / "captions.jsonl")
    truth = {str(k): im.objects for k, im in coco.load_coco(annotations).items()}
    assert sorted(r["id"] for r in records) == sorted(
        str(im.image_id) for im in coco.sample_images(coco.load_coco(annotations).values(), 4, 0)
    )
    for r in records:
        want = direct(images / f"COCO_val2014_{int(r['id']):012d}.png", CHAIR_PROMPT, 8)
        assert (r["status"], r["prompt"], r["response"]) == ("ok", CHAIR_PROMPT, want)
        fields = caption_fields(coco.VOCABULARY, want, truth[r["id"]])
        assert {k: r[k] for k in fields} == fields
    assert any(len(r["response"].split()) > 2 for r in records)  # real text was compared
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"] == chair_summary(records, truth)
    assert (summary["items"], summary["answered"], summary["model"]) == (4, 4, "base")


@pytest.mark.slow
def test_eval_pope_against_the_tiny_service(tmp_path: Path, live_server: str, direct) -> None:
    _, images = write_coco(tmp_path, 4, real_images=True)
    files = [write_pope(tmp_path, s, 3) for s in ("random", "adversarial")]
    out = tmp_path / "pope"
    args = ["pope", "--service", live_server, "--images", str(images), "--out", str(out),
            "--max-new-tokens", "4", "--quiet"]  # fmt: skip
    for f in files:
        args += ["--questions", str(f)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    records = read_jsonl(out / "answers.jsonl")
    assert len(records) == 6 and len({r["id"] for r in records}) == 6
    summary = json.loads((out / "summary.json").read_text())
    assert any(r["response"] for r in records)
    for r in records:
        want = direct(images / r["image"], r["question"] + POPE_SUFFIX, 4)
        assert r["response"] == want and r["answer"] == parse_answer(want)
    for split in ("random", "adversarial"):
        pairs = [(r["label"], r["answer"]) for r in records if r["split"] == split]
        assert summary["metrics"]["splits"][split] == pope_metrics(pairs)


# --- a deterministic fake service: kill, resume, settings, compare --------------------------


class EvalFakeService(FakeService):
    """Images by sha256; greedy answers that name COCO objects, a function of model, prompt
    and image (so a resumed run must reproduce an uninterrupted one exactly)."""

    delay = 0.04
    uploads: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        time.sleep(self.delay)
        raw = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path == "/v1/images":
            self.uploads.append(hashlib.sha256(raw).hexdigest())
            return self._send(200, {"id": hashlib.sha256(raw).hexdigest(), "width": 1, "height": 1})
        req = json.loads(raw)
        if req["max_new_tokens"] > 1000:  # as the service's limit does
            err = {"type": "invalid_request", "message": "too many", "field": "max_new_tokens"}
            return self._send(422, {"error": err})
        key = f"{req['model']}{req['prompt']}{req['image']}".encode()
        h = int(hashlib.sha256(key).hexdigest(), 16)
        if "Is there" in req["prompt"]:
            text = f"Yes, there is {WORDS[h % 7]}." if h % 3 else "No."
        else:
            text = f"There is {WORDS[h % 7]} and {WORDS[h // 7 % 7]}."
        cand = {"text": text, "token_ids": [1, 2, 3], "token_logprobs": [-0.1] * 3,
                "finished": True, "stop_reason": "eos"}  # fmt: skip
        self._send(200, {"model": req["model"], "candidates": [cand], "usage": {}})


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a killed client's broken pipe is expected here


@contextlib.contextmanager
def fake_service() -> Iterator[str]:
    server = QuietServer(("127.0.0.1", 0), EvalFakeService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def chair_cmd(url: str, annotations: Path, images: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "selfreward_vlm.client.eval.cli", "chair", "--service", url,
            "--annotations", str(annotations), "--images", str(images), "--out", str(out),
            "--quiet", *extra]  # fmt: skip


def wait_for_lines(path: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise TimeoutError("no progress")


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "1000"}  # rich: no wrapping


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupt_then_resume_gives_each_item_once(tmp_path: Path, sig: signal.Signals) -> None:
    annotations, images = write_coco(tmp_path, 30, real_images=False)
    with fake_service() as url:
        ref_args = chair_cmd(url, annotations, images, tmp_path / "ref", "--limit", "30")[3:]
        reference = CliRunner().invoke(app, ref_args)
        assert reference.exit_code == 0, reference.output
        out = tmp_path / "run"
        cmd = chair_cmd(url, annotations, images, out, "--limit", "30", "--concurrency", "2")
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
        wait_for_lines(out / "captions.jsonl", 3, proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        if sig == signal.SIGINT:
            assert proc.returncode == 130 and "Rerun the same command" in " ".join(err.split())
        with (out / "captions.jsonl").open("a") as f:  # as if killed in the middle of a line
            f.write('{"id": "29", "status": "ok", "resp')
        partial = len(read_jsonl_lenient(out / "captions.jsonl"))
        assert 3 <= partial < 30
        rerun = subprocess.run(
            cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120
        )
        assert rerun.returncode == 0, rerun.stderr
    got, want = read_jsonl(out / "captions.jsonl"), read_jsonl(tmp_path / "ref" / "captions.jsonl")
    assert len(got) == 30 and len({r["id"] for r in got}) == 30  # none twice, none lost
    assert sorted((r["id"], r["response"]) for r in got) == sorted(
        (r["id"], r["response"]) for r in want)  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["resumed"] == partial
    assert (
        summary["metrics"] == json.loads((tmp_path / "ref" / "summary.json").read_text())["metrics"]
    )


def read_jsonl_lenient(path: Path) -> list[str]:
    return [x for x in path.read_text().split("\n")[:-1]]


def test_resume_refuses_other_settings_and_bad_input(tmp_path: Path) -> None:
    annotations, images = write_coco(tmp_path, 3, real_images=False)
    out = tmp_path / "run"
    with fake_service() as url:
        args = chair_cmd(url, annotations, images, out)[3:]
        assert CliRunner().invoke(app, args).exit_code == 0
        res = CliRunner().invoke(app, [*args, "--prompt", "Describe it."])
        assert res.exit_code == 2 and "another --out folder" in res.output
        res = CliRunner().invoke(app, chair_cmd(url, annotations, tmp_path / "nope", out)[3:])
        assert res.exit_code == 2 and "--images" in res.output
        too_long = chair_cmd(url, annotations, images, tmp_path / "o3", "--max-new-tokens", "2000")
        res = CliRunner().invoke(app, too_long[3:])
        assert res.exit_code == 1 and "max_new_tokens" in res.output  # a run setting: stop
        (images / "COCO_val2014_000000000001.png").unlink()
        res = CliRunner().invoke(app, chair_cmd(url, annotations, images, tmp_path / "o2")[3:])
        assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "o2" / "summary.json").read_text())
    assert (summary["answered"], summary["skipped"]) == (2, 1)


def test_compare_lays_out_table_7(tmp_path: Path) -> None:
    annotations, images = write_coco(tmp_path, 6, real_images=False)
    pope = write_pope(tmp_path, "popular", 8)  # 8 questions about 4 images
    EvalFakeService.uploads = []
    with fake_service() as url:
        for model in ("base", "iter1"):
            run = tmp_path / "runs" / model
            common = ["--service", url, "--images", str(images), "--model", model, "--quiet"]
            res = CliRunner().invoke(app, ["chair", *common, "--annotations", str(annotations),
                                           "--out", str(run / "chair")])  # fmt: skip
            assert res.exit_code == 0, res.output
            res = CliRunner().invoke(app, ["pope", *common, "--questions", str(pope),
                                           "--out", str(run / "pope")])  # fmt: skip
            assert res.exit_code == 0, res.output
    assert len(EvalFakeService.uploads) == 2 * (6 + 4)  # each image once per run
    runs = [str(tmp_path / "runs" / m) for m in ("base", "iter1")]
    res = CliRunner().invoke(app, ["compare", *runs], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    for model in ("base", "iter1"):
        chair = json.loads((tmp_path / "runs" / model / "chair" / "summary.json").read_text())
        pope_s = json.loads((tmp_path / "runs" / model / "pope" / "summary.json").read_text())
        row = next(line for line in res.output.splitlines() if f" {model} " in line)
        cells = [c.strip() for c in row.split("│")[2:-1]]
        assert cells.pop() == "CHAIR default, POPE robust"  # the rule each run read with
        assert cells == [f"{100 * pope_s['metrics']['mean']['accuracy']:.2f}",
                         f"{100 * pope_s['metrics']['mean']['f1']:.2f}",
                         f"{100 * chair['metrics']['chair_s']:.1f}",
                         f"{100 * chair['metrics']['chair_i']:.1f}",
                         f"{chair['metrics']['avg_length']:.1f}"]  # fmt: skip
    assert "HalBench" not in res.output  # no run has it: no empty columns


def test_object_halbench_uses_its_8_prompts(tmp_path: Path) -> None:
    annotations, images = write_coco(tmp_path, 10, real_images=False)
    out = tmp_path / "runs" / "sbspo" / "halbench"
    with fake_service() as url:
        res = CliRunner().invoke(app, ["object-halbench", "--service", url, "--annotations",
                                       str(annotations), "--images", str(images), "--out",
                                       str(out), "--quiet"])  # fmt: skip
    assert res.exit_code == 0, res.output
    order = coco.sample_images(coco.load_coco(annotations).values(), 300, 0)
    records = {r["id"]: r for r in read_jsonl(out / "captions.jsonl")}
    assert [records[str(im.image_id)]["prompt"] for im in order] == [
        HALBENCH_PROMPTS[k % 8] for k in range(10)]  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    m = summary["metrics"]
    assert summary["benchmark"] == "object_halbench" and m["n_captions"] == 10
    assert (m["response_rate"], m["mention_rate"]) == (m["chair_s"], m["chair_i"])
    titles, rows = compare_rows([tmp_path / "runs" / "sbspo"])
    assert titles == ["HalBench Resp.", "HalBench Ment."]
    assert rows[0]["HalBench Ment."] == pytest.approx(100 * m["chair_i"])


def test_compare_names_the_reading_each_run_used(tmp_path: Path) -> None:
    """`--metric-compat rohrbach` and `--answer-rule official` are recorded in the summaries
    and shown by `compare`; a resume with another reading is refused."""
    annotations, images = write_coco(tmp_path, 3, real_images=False)
    pope = write_pope(tmp_path, "random", 4)
    run = tmp_path / "runs" / "compat"
    with fake_service() as url:
        common = ["--service", url, "--images", str(images), "--quiet"]
        chair_args = ["chair", *common, "--annotations", str(annotations),
                      "--out", str(run / "chair")]  # fmt: skip
        res = CliRunner().invoke(app, [*chair_args, "--metric-compat", "rohrbach"])
        assert res.exit_code == 0, res.output
        res = CliRunner().invoke(app, ["pope", *common, "--questions", str(pope), "--out",
                                       str(run / "pope"), "--answer-rule", "official"])  # fmt: skip
        assert res.exit_code == 0, res.output
        assert "official rule" in " ".join(res.output.split())
        res = CliRunner().invoke(app, chair_args)  # the default reading on the same folder
        assert res.exit_code == 2 and "metric_compat" in res.output
    chair = json.loads((run / "chair" / "summary.json").read_text())
    pope_s = json.loads((run / "pope" / "summary.json").read_text())
    assert chair["settings"]["metric_compat"] == "rohrbach"
    assert pope_s["settings"]["answer_rule"] == "official"
    assert all(m["unparsed"] == 0 for m in pope_s["metrics"]["splits"].values())
    _, rows = compare_rows([run])
    assert rows[0]["rules"] == "CHAIR rohrbach, POPE official"
