"""Every code block of the README runs, or says why it cannot here.

A fenced block with a language carries a marker on the line before it:
`<!-- readme-block: run -->` (run below, against a real service on the tiny models), or the
reason it does not run in `make test`: it needs a GPU or the network, or another target runs
it (`.ci/run`, `make harness`, `make reliability`, a named test), or it is a synopsis of
options. Blocks without a language are figures.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.test_scoring_api import png
from tests.conftest import ROOT, start_server, stop_server

README = ROOT / "README.md"
REASONS = ("needs a GPU", "needs the network", "run by ", "synopsis:")
_BLOCK = re.compile(r"(?:<!-- readme-block: (.*?) -->\n)?```(\w+)\n(.*?)\n```", re.S)


def blocks() -> list[tuple[str | None, str, str, int]]:
    """(marker, language, code, line) of every fenced block with a language."""
    text = README.read_text()
    return [
        (m.group(1), m.group(2), m.group(3), text.count("\n", 0, m.start()) + 1)
        for m in _BLOCK.finditer(text)
    ]


def test_every_block_runs_or_says_why_not() -> None:
    found = blocks()
    assert len(found) >= 18
    for marker, _, code, line in found:
        assert marker is not None, f"README line {line}: a code block without a marker"
        assert marker == "run" or marker.startswith(REASONS), f"line {line}: {marker!r}"
        for target in re.findall(r"make ([\w-]+)", code if marker.startswith("run by") else ""):
            assert re.search(rf"^{target}:", (ROOT / "Makefile").read_text(), re.M), target


@pytest.fixture(scope="module")
def served(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    """A service on the tiny VLM + CLIP, and a working folder holding what the blocks read:
    `cat.png` and a LoRA adapter in `out/adapter`."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlavaForConditionalGeneration

    work = tmp_path_factory.mktemp("readme-work")
    (work / "cat.png").write_bytes(png())
    model = LlavaForConditionalGeneration.from_pretrained(tiny_models["vlm"])
    config = LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)")
    get_peft_model(model, config).save_pretrained(str(work / "out" / "adapter"))
    proc, url = start_server(tiny_models, tmp_path_factory.mktemp("readme-data"))
    try:
        yield url, work
    finally:
        stop_server(proc)


def localize(code: str, url: str) -> str:
    return code.replace("http://127.0.0.1:8000", url).replace("http://gpu-box:8000", url)


def test_the_runnable_blocks_run(served: tuple[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    url, work = served
    monkeypatch.chdir(work)
    import httpx

    image_id = httpx.post(
        f"{url}/v1/images", content=png(), headers={"content-type": "image/png"}
    ).json()["id"]
    score = {"reward": 1.0}
    pair = {"id": "p0", "prompt_id": "q0", "prompt": "Describe the image.", "chosen": "A cat.",
            "rejected": "A dog.", "images": [image_id], "method": "csr",
            "chosen_score": score, "rejected_score": score}  # fmt: skip
    res = httpx.post(f"{url}/v1/datasets/csr-iter1/pairs", json={"pairs": [pair]})
    assert res.status_code == 200, res.text  # the dataset the curl block reads
    ran = 0
    for marker, language, code, line in blocks():
        if marker != "run":
            continue
        code = localize(code, url)
        if language == "python":
            exec(compile(code, f"README.md:{line}", "exec"), {"IMG": image_id})
        else:
            assert language == "bash", line
            # curl exits non-zero on an HTTP error here, so a 4xx fails the block
            prelude = 'curl() { command curl --fail-with-body "$@"; }\n'
            proc = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", prelude + code],
                cwd=work,
                capture_output=True,
                text=True,
                timeout=120,
                env={**os.environ, "URL": url, "IMG": image_id},
            )
            out = (proc.stdout[-1500:] + proc.stderr[-1500:]).strip()
            assert proc.returncode == 0, f"README.md:{line}: exit {proc.returncode}\n{out}"
        ran += 1
    assert ran == 5
