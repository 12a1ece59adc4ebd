"""One DPO step per model family through `selfreward train` (TRL DPOTrainer + PEFT LoRA).

Per family: the trainer's collator tokenizes prompt + response exactly as the service does
(same ids); one DPO step runs; the trained adapter, loaded into the service's engine, changes
the service's scores, and those scores equal the model's own forward with PEFT's adapter.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest

from tests.families_fixtures import (
    FAMILIES,
    PROMPT,
    own_forward_logprobs,
    picture,
)

COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
CHOSEN, REJECTED = " There is a red circle.", " A dog runs in the park."


def write_pairs(root: Path, n: int = 2) -> Path:
    """n pairs over n images of two sizes (ids = sha256 of the PNG bytes)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        buf = io.BytesIO()
        picture((32, 32) if i % 2 == 0 else (64, 24), COLOURS[i % 4]).save(buf, format="PNG")
        data = buf.getvalue()
        (root / "images" / f"img{i}.png").write_bytes(data)
        rows.append(
            {
                "id": f"p{i}", "prompt_id": f"q{i}", "prompt": PROMPT, "chosen": CHOSEN,
                "rejected": REJECTED, "images": [hashlib.sha256(data).hexdigest()],
                "method": "csr", "chosen_score": {"reward": 1.0},
                "rejected_score": {"reward": 0.0},
            }
        )  # fmt: skip
    path = root / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("family", FAMILIES)
def test_collator_tokenizes_as_the_service(family, family_engine) -> None:
    from selfreward_vlm.trainer.collator import ServiceAlignedCollator

    engine = family_engine(family).engine
    collator = ServiceAlignedCollator(engine.processor)
    for size in ((32, 32), (64, 24)):
        img = picture(size)
        ids, extras = collator.encode_prompt(PROMPT, [img])
        assert ids == engine.encode_prompt(PROMPT, f"collate-{size}", img).ids
        want = [*engine.encode_text(CHOSEN), engine.eos_token_id]
        assert collator.encode_completion(CHOSEN) == want
        row = {
            "prompt": [{"role": "user", "content": PROMPT}],
            "chosen": [{"role": "assistant", "content": CHOSEN}],
            "rejected": [{"role": "assistant", "content": REJECTED}],
            "images": [img],
        }
        batch = collator([row, row])
        assert batch["input_ids"].shape[0] == 4
        for key in ("mm_token_type_ids", "token_type_ids"):
            if key in extras:  # extended over completion and padding with 0 (text)
                assert batch[key].shape == batch["input_ids"].shape
                assert int(batch[key][0, len(ids) :].abs().sum()) == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_one_dpo_step_and_the_adapter_changes_service_scores(
    family, family_dirs, family_engine, tmp_path
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from typer.testing import CliRunner

    from selfreward_vlm.trainer.cli import build_app

    pairs = write_pairs(tmp_path)
    out = tmp_path / "out"
    args = ["train", "--model", str(family_dirs[family]), "--pairs", str(pairs), "--images",
            str(tmp_path / "images"), "--out", str(out), "--max-steps", "1", "--batch-size", "2",
            "--lr", "5e-2", "--lora-r", "4", "--lora-alpha", "8", "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 1
    adapter = Path(summary["adapter_dir"]) if "adapter_dir" in summary else out / "adapter"
    engine = family_engine(family).engine
    name = f"dpo-{family}"
    engine.adapters.load(name, adapter)
    from selfreward_vlm.service.engine.lm import ScoreItem

    img = picture((64, 24), COLOURS[1])
    base = engine.score([ScoreItem("base", PROMPT, [CHOSEN], "", f"t-{family}", img)])[0][0]
    tuned = engine.score([ScoreItem(name, PROMPT, [CHOSEN], "", f"t-{family}", img)])[0][0]
    assert (
        max(abs(a - b) for a, b in zip(base.token_logprobs, tuned.token_logprobs, strict=True))
        > 1e-3
    )
    model = AutoModelForImageTextToText.from_pretrained(family_dirs[family]).eval()
    model = PeftModel.from_pretrained(model, adapter).eval()
    processor = AutoProcessor.from_pretrained(family_dirs[family])
    want = own_forward_logprobs(model, processor, img, "", CHOSEN)
    assert tuned.token_logprobs == pytest.approx(want, abs=1e-4)
