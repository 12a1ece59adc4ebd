"""The evaluation harnesses people already run, against the service on the tiny models:
lm-evaluation-harness 0.4.13 (`local-completions`, log-likelihoods of a multiple-choice task)
checked against its own `hf` backend on the same model folder, and lmms-eval 0.7's OpenAI-
compatible model (an image task over `/v1/chat/completions`) checked against `/v1/generate`.

Both harnesses live in a side venv (`scripts/harness_venv.sh`; `make harness` builds it and
runs this file): they pin their own torch and datasets. Without it these tests skip. The tasks
are local (`tests/harness/`): no download. With `SELFREWARD_HARNESS_REPORT=FILE` the figures
(run times, largest log-likelihood difference) are appended to FILE as JSON lines.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import ROOT, start_server, stop_server

HARNESS = ROOT / "tests" / "harness"
VENV = Path(
    os.environ.get("SELFREWARD_HARNESS_VENV")
    or Path.home() / ".cache" / "selfreward" / "harness-venv"
)
pytestmark = pytest.mark.skipif(
    not (VENV / ".installed").exists(),
    reason=f"no harness venv at {VENV} (make harness, or scripts/harness_venv.sh)",
)
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "OPENAI_API_KEY": "unused",
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def report(**figures: Any) -> None:
    path = os.environ.get("SELFREWARD_HARNESS_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(figures) + "\n")


def harness(args: list[str], cwd: Path, out: Path) -> tuple[list[dict], float]:
    """Run a harness command in the side venv; its logged samples (by doc id) and run time."""
    start = time.monotonic()
    proc = subprocess.run(
        [*args, "--include_path", ".", "--log_samples", "--output_path", str(out)],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=900,
    )
    seconds = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    files = sorted(out.rglob("*samples_*.jsonl"))
    assert files, proc.stderr[-3000:]
    samples = [json.loads(line) for line in files[-1].read_text().splitlines()]
    return sorted(samples, key=lambda s: s["doc_id"]), seconds


@pytest.fixture(scope="module")
def lm_server(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    proc, url = start_server(tiny_models, tmp_path_factory.mktemp("harness-lm"), model_key="lm")
    try:
        yield url
    finally:
        stop_server(proc)


def loglikelihoods(samples: list[dict]) -> list[list[tuple[float, bool]]]:
    """Per item, per choice: lm-eval's (log-likelihood, is_greedy)."""
    return [[(float(r[0]), r[1] == "True") for r in s["filtered_resps"]] for s in samples]


def test_lm_eval_local_completions_matches_its_hf_backend(
    lm_server: str, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    model = str(tiny_models["lm"])
    task = ["--tasks", "selfreward_mc", "--batch_size", "4"]
    lm_eval = str(VENV / "bin" / "lm_eval")
    reference, hf_s = harness(
        [
            lm_eval,
            "--model",
            "hf",
            "--model_args",
            f"pretrained={model},dtype=float32",
            "--device",
            "cpu",
            *task,
        ],
        HARNESS / "text_task",
        tmp_path / "hf",
    )
    want = loglikelihoods(reference)
    assert len(want) == 20
    for tokenized, batch in ((True, "4"), (False, "3")):
        args = (
            f"model={model},base_url={lm_server}/v1/completions,tokenized_requests={tokenized},"
            "tokenizer_backend=huggingface,num_concurrent=1,max_retries=1"
        )
        served, api_s = harness(
            [
                lm_eval,
                "--model",
                "local-completions",
                "--model_args",
                args,
                "--tasks",
                "selfreward_mc",
                "--batch_size",
                batch,
            ],
            HARNESS / "text_task",
            tmp_path / f"api-{tokenized}",
        )
        got = loglikelihoods(served)
        diff = max(
            abs(g[0] - w[0])
            for gi, wi in zip(got, want, strict=True)
            for g, w in zip(gi, wi, strict=True)
        )
        assert diff < 1e-4
        assert [[g[1] for g in item] for item in got] == [[w[1] for w in item] for item in want]
        assert [s["acc"] for s in served] == [s["acc"] for s in reference]
        report(
            harness="lm-eval local-completions",
            tokenized_requests=tokenized,
            batch_size=int(batch),
            items=len(got),
            max_abs_diff=diff,
            acc=sum(s["acc"] for s in served) / len(served),
            seconds=round(api_s, 1),
            hf_seconds=round(hf_s, 1),
        )


def test_lmms_eval_openai_model_answers_as_generate(live_server: str, tmp_path: Path) -> None:
    samples, seconds = harness(
        [
            str(VENV / "bin" / "python"),
            "-m",
            "lmms_eval",
            "--model",
            "openai",
            "--model_args",
            f"model=base,base_url={live_server}/v1,num_concurrent=1,max_retries=1",
            "--tasks",
            "selfreward_colors",
            "--batch_size",
            "1",
        ],
        HARNESS / "image_task",
        tmp_path / "lmms",
    )
    docs = json.loads((HARNESS / "image_task" / "selfreward_colors.json").read_text())
    assert len(samples) == len(docs)
    for sample in samples:
        doc = docs[sample["doc_id"]]
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), tuple(doc["color"])).save(buf, format="PNG")
        body = {
            "prompt": doc["question"],
            "strategy": "greedy",
            "n": 1,
            "stop": "eos",
            "max_new_tokens": 12,
            "image": {"base64": base64.b64encode(buf.getvalue()).decode()},
        }
        res = httpx.post(f"{live_server}/v1/generate", json=body, timeout=60)
        assert res.status_code == 200, res.text
        answer = res.json()["candidates"][0]["text"]
        assert sample["filtered_resps"] == answer.strip(), (sample, answer)
    report(harness="lmms-eval openai", items=len(samples), seconds=round(seconds, 1))
