"""LoRA DPO trainer on the tiny VLM (CPU, seconds per test).

What is checked against what: the DPO loss at step 0 against log 2 (policy = reference); the
implicit-reward margin after training against a direct transformers forward and against the
service's `/v1/implicit-reward`; the first-step loss with the service's reference log-probs
against the in-trainer reference forward (with policy != reference, so the loss is not log 2).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest

COLOURS = ["red", "blue", "green", "yellow"]
SHAPES = ["circle", "square", "triangle", "cross"]


def tiny_image(i: int) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (32, 32), "white")
    ImageDraw.Draw(img).rectangle((4 + i % 5, 4, 24, 20 + i % 7), fill=COLOURS[i % 4])
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_pairs(root: Path, n: int = 8, extra: list[dict[str, Any]] | None = None) -> Path:
    """n pairs over n images (files named img{i}.png: ids found by hashing) as JSONL."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        data = tiny_image(i)
        (root / "images" / f"img{i}.png").write_bytes(data)
        colour, shape = COLOURS[i % 4], SHAPES[i % 4]
        rows.append(
            {
                "id": f"p{i}", "prompt_id": f"q{i}", "prompt": "Describe the image.",
                "chosen": f" There is a {colour} {shape}.",
                "rejected": f" There is a {COLOURS[(i + 1) % 4]} {SHAPES[(i + 2) % 4]}.",
                "images": [hashlib.sha256(data).hexdigest()], "method": "csr",
                "chosen_score": {"reward": 1.0}, "rejected_score": {"reward": 0.0},
            }
        )  # fmt: skip
    rows += extra or []
    path = root / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(tiny_models: dict[str, Path], pairs: Path | str, out: Path, **kw: Any) -> Any:
    from selfreward_vlm.trainer.config import build_config

    values: dict[str, Any] = {
        "model": str(tiny_models["vlm"]), "pairs": str(pairs), "out": str(out),
        "images": str(Path(pairs).parent / "images") if not str(pairs).startswith("http") else None,
        "lr": 1e-3, "lora_r": 8, "lora_alpha": 16, "batch_size": 4, "max_steps": 2,
        "save_steps": 100, "device": "cpu",
    }  # fmt: skip
    values.update(kw)
    return build_config(**values)


@pytest.fixture(scope="module")
def trained(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """12 steps at lr 1e-3 on 8 pairs (+1 with `<image>` in the chosen, to be dropped)."""
    from selfreward_vlm.trainer.dpo import train

    root = tmp_path_factory.mktemp("trained")
    bad = json.loads(make_pairs(root).read_text().splitlines()[0])
    pairs = make_pairs(root, extra=[{**bad, "id": "bad", "chosen": " A <image> here."}])
    with pairs.open("a") as f:
        f.write('{"id": "torn')  # an interrupted writer's half line
    return train(config(tiny_models, pairs, root / "out", max_steps=12)), pairs


def first_loss(result: Any) -> float:
    assert result.first_loss is not None
    return float(result.first_loss)


def sequence_logps(model: Any, processor: Any, pair: dict[str, Any], images: Path) -> list[float]:
    """Sum log p(response + EOS | image, prompt) by a plain forward, for chosen and rejected."""
    import torch
    from PIL import Image

    [image_file] = [p for p in images.iterdir() if hashlib.sha256(p.read_bytes()).hexdigest()
                    == pair["images"][0]]  # fmt: skip
    image = Image.open(image_file).convert("RGB")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text",
                 "text": pair["prompt"]}]}]  # fmt: skip
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt = processor(text=text, images=[image], return_tensors="pt")
    out = []
    for side in ("chosen", "rejected"):
        ids = processor.tokenizer(pair[side] + "</s>", add_special_tokens=False)["input_ids"]
        input_ids = torch.cat([prompt["input_ids"], torch.tensor([ids])], dim=1)
        with torch.no_grad():
            logits = model(input_ids=input_ids, pixel_values=prompt["pixel_values"]).logits
        logp = torch.log_softmax(logits[0, -len(ids) - 1 : -1].float(), dim=-1)
        out.append(float(logp.gather(1, torch.tensor(ids)[:, None]).sum()))
    return out


def test_step0_loss_is_log2_and_dropped_pairs(trained: Any) -> None:
    result, _ = trained
    assert abs(result.first_loss - math.log(2)) < 1e-4  # policy == reference at step 0
    assert result.pairs == {"total": 9, "dropped_special_tokens": 1, "dropped_empty": 0,
                            "used": 8}  # fmt: skip
    assert result.steps == 12 and result.final_loss < result.first_loss
    adapter = Path(result.adapter_dir)
    assert sorted(p.name for p in adapter.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors"]  # fmt: skip
    summary = json.loads((adapter.parent / "train_summary.json").read_text())
    assert summary["steps"] == 12
    assert len((adapter.parent / "log.jsonl").read_text().splitlines()) == 12


def test_margin_grows_direct_forward(trained: Any, tiny_models: dict[str, Path]) -> None:
    """β·[(log π − log π_ref)(chosen) − (…)(rejected)] by plain transformers forwards."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    result, pairs_file = trained
    processor = AutoProcessor.from_pretrained(tiny_models["vlm"])
    base = AutoModelForImageTextToText.from_pretrained(tiny_models["vlm"]).eval()
    model = PeftModel.from_pretrained(base, result.adapter_dir).eval()
    margins = []
    for line in pairs_file.read_text().splitlines()[:8]:
        pair = json.loads(line)
        policy = sequence_logps(model, processor, pair, pairs_file.parent / "images")
        with model.disable_adapter():
            ref = sequence_logps(model, processor, pair, pairs_file.parent / "images")
        margins.append(0.1 * ((policy[0] - ref[0]) - (policy[1] - ref[1])))
    assert sum(margins) / len(margins) > 0.1  # 0 before training (policy == reference)
    assert sum(m > 0 for m in margins) >= 7


def test_only_lora_weights_change(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from selfreward_vlm.trainer.dpo import build_trainer

    trainer, _, _ = build_trainer(config(tiny_models, make_pairs(tmp_path), tmp_path / "o"))
    params = dict(trainer.model.named_parameters())
    before = {k: v.detach().clone() for k, v in params.items()}
    trainer.train()
    lora = [k for k in params if "lora_" in k]
    assert lora and all(".language_model." in k for k in lora)  # vision tower stays out
    assert any(not before[k].equal(params[k]) for k in lora if "lora_B" in k)
    assert all(before[k].equal(params[k]) for k in params if "lora_" not in k)
    assert all(not params[k].requires_grad for k in params if "lora_" not in k)


def test_checkpoint_resume(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from selfreward_vlm.trainer.dpo import train

    pairs, out = make_pairs(tmp_path), tmp_path / "out"
    first = train(config(tiny_models, pairs, out, max_steps=2, save_steps=1, batch_size=2))
    assert first.steps == 2 and first.resumed_from is None
    again = train(config(tiny_models, pairs, out, max_steps=4, save_steps=1, batch_size=2))
    assert again.steps == 4 and str(again.resumed_from).endswith("checkpoint-2")
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # steps 1-2 were not redone


def test_train_command(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """The typer command end to end, with a YAML config, flag overrides and DPO + SFT loss."""
    from typer.testing import CliRunner

    from selfreward_vlm.trainer.cli import build_app

    pairs = make_pairs(tmp_path)
    (tmp_path / "c.yaml").write_text(f"model: {tiny_models['vlm']}\nlora_r: 8\nlr: 1e-3\n")
    args = ["train", "--config", str(tmp_path / "c.yaml"), "--pairs", str(pairs), "--images",
            str(tmp_path / "images"), "--out", str(tmp_path / "out"), "--max-steps", "2",
            "--loss-type", "sigmoid,sft", "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "train_summary.json").read_text())
    assert summary["steps"] == 2 and summary["config"]["loss_type"] == ["sigmoid", "sft"]
    assert summary["first_loss"] > math.log(2)  # the SFT term adds the chosen NLL
    bad = CliRunner().invoke(build_app(), ["train", "--pairs", str(pairs), "--out", "o"])
    assert bad.exit_code != 0 and "model" in bad.output


def bos_processor(tiny_models: dict[str, Path]) -> Any:
    """The tiny processor with a tokenizer that adds BOS, as LLaVA-1.5's Llama tokenizer does."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_models["vlm"])
    tok = processor.tokenizer
    tok._tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)]
    )
    return processor


def test_collator_tokenizes_like_the_service(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """Prompt WITH the tokenizer's special tokens (BOS), response + EOS without; TRL's own
    collator drops the BOS, which is why the trainer brings its own."""
    from PIL import Image
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    from selfreward_vlm.trainer.collator import ServiceAlignedCollator
    from selfreward_vlm.trainer.data import ImageLoader, read_pairs_jsonl, to_trl_row

    processor = bos_processor(tiny_models)
    tok = processor.tokenizer
    pairs_file = make_pairs(tmp_path, n=2)
    store = ImageLoader(images=tmp_path / "images")
    rows = [to_trl_row(p, store) for p in read_pairs_jsonl(pairs_file)]
    batch = ServiceAlignedCollator(processor)(rows)
    image = Image.open(tmp_path / "images" / "img0.png").convert("RGB")
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text",
          "text": "Describe the image."}]}], add_generation_prompt=True, tokenize=False,
    )  # fmt: skip
    prompt = processor(text=text, images=[image])["input_ids"][0]
    assert prompt[0] == tok.bos_token_id
    for row, side in ((0, "chosen"), (2, "rejected")):
        response = tok(rows[0][side][0]["content"][0]["text"] + "</s>", add_special_tokens=False)
        expected = list(prompt) + response["input_ids"]
        assert batch["input_ids"][row, : len(expected)].tolist() == expected
        assert batch["completion_mask"][row].sum() == len(response["input_ids"])
        assert expected[-1] == tok.eos_token_id
    assert batch["pixel_values"].shape[0] == 4  # chosen half + rejected half
    trl_batch = DataCollatorForVisionPreference(processor)([dict(r) for r in rows])
    assert trl_batch["input_ids"][0, 0] != tok.bos_token_id


def test_config_file_and_flags(tmp_path: Path) -> None:
    from selfreward_vlm.trainer.config import ConfigError, build_config, split_dataset_url

    path = tmp_path / "c.yaml"
    path.write_text("model: m\npairs: http://h:1/v1/datasets/run-iter1\nout: o\nlr: 1e-3\n"
                    "loss-type: [sigmoid, sft]\nbeta: 5e-2\n")  # fmt: skip
    cfg = build_config(path, lr=2e-4, seed=None)
    assert (cfg.lr, cfg.beta, cfg.loss_type, cfg.seed) == (2e-4, 0.05, ["sigmoid", "sft"], 42)
    assert cfg.service_url == "http://h:1"
    assert split_dataset_url("http://h:1/x/v1/datasets/d/pairs") == ("http://h:1/x", "d")
    with pytest.raises(ConfigError, match="lr_typo"):
        build_config(path, lr_typo=1)
    with pytest.raises(ConfigError, match="reference_name"):
        build_config(path, reference_logprobs="service", reference="/some/adapter")


def test_reference_adapter_from_a_dir(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """Iteration t > 1: policy starts from adapter t-1 and the reference is adapter t-1, as
    TRL's copy (same dir) or loaded as adapter "ref" (another dir, same weights): loss log 2."""
    import shutil

    from selfreward_vlm.trainer.dpo import train

    pairs, adapter = make_pairs(tmp_path), random_adapter(tiny_models, tmp_path / "a")
    copy = Path(shutil.copytree(adapter, tmp_path / "a-copy"))
    for name, init in (("same", adapter), ("loaded", copy)):
        result = train(config(tiny_models, pairs, tmp_path / name, init_adapter=str(init),
                              reference=str(adapter), max_steps=1))  # fmt: skip
        assert abs(first_loss(result) - math.log(2)) < 1e-4, name
    assert result.reference == str(adapter)


# --------------------------------------------------------------------------- through the service


def publish(base_url: str, pairs_file: Path, dataset: str) -> str:
    """Upload the pairs' images and the pairs to the service; return the dataset URL."""
    from selfreward_vlm.client import ScoringClient
    from selfreward_vlm.core.schemas import PreferencePair

    with ScoringClient(base_url) as client:
        for image in sorted((pairs_file.parent / "images").iterdir()):
            client.upload_image(image.read_bytes())
        pairs = [PreferencePair.model_validate_json(line)
                 for line in pairs_file.read_text().splitlines()]  # fmt: skip
        client.upsert_pairs(dataset, pairs)
    return f"{base_url}/v1/datasets/{dataset}"


def random_adapter(tiny_models: dict[str, Path], out: Path) -> Path:
    """A LoRA with random (non-zero) B: a policy that differs from the base."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from selfreward_vlm.trainer.config import VLM_LORA_TARGETS

    torch.manual_seed(1)
    base = AutoModelForImageTextToText.from_pretrained(tiny_models["vlm"])
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=VLM_LORA_TARGETS, init_lora_weights=False)
    model = get_peft_model(base, lora)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.mul_(0.2)  # a clear but moderate shift from the base
    model.save_pretrained(str(out))
    return out


@pytest.mark.slow
def test_service_reference_gives_the_same_first_loss(
    live_server: str, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """Policy = a random adapter, reference = base: the step-1 loss is not log 2, and the
    service's reference log-probs reproduce the in-trainer reference forward."""
    from selfreward_vlm.trainer.dpo import train

    pairs_file = make_pairs(tmp_path)
    url = publish(live_server, pairs_file, "ref-check")
    init = random_adapter(tiny_models, tmp_path / "init")
    common = {"init_adapter": str(init), "max_steps": 1, "batch_size": 8}
    model_ref = train(config(tiny_models, url, tmp_path / "a", **common))
    service_ref = train(config(tiny_models, url, tmp_path / "b", reference_logprobs="service",
                               **common))  # fmt: skip
    assert abs(first_loss(model_ref) - math.log(2)) > 1e-3
    assert abs(first_loss(service_ref) - first_loss(model_ref)) < 1e-4
    assert service_ref.reference == "service:base"
    # per sequence: the service's sums vs the trainer's own reference forward on one batch
    import torch
    from trl.trainer.utils import use_adapter

    from selfreward_vlm.trainer.dpo import build_trainer

    trainer, _, _ = build_trainer(config(tiny_models, url, tmp_path / "c",
                                         reference_logprobs="service", **common))  # fmt: skip
    batch = next(iter(trainer.get_train_dataloader()))
    with use_adapter(trainer.model, None):  # adapters off: the base reference
        ours = torch.cat(trainer.compute_ref_log_probs(trainer.model, batch))
    theirs = torch.cat([batch["ref_chosen_logps"], batch["ref_rejected_logps"]])
    assert torch.allclose(ours, theirs, atol=1e-3), (ours, theirs)  # sums of ~50 nats


@pytest.mark.slow
def test_margin_grows_on_the_service(
    trained: Any, live_server: str, tiny_models: dict[str, Path]
) -> None:
    """The trained adapter, uploaded, has a positive implicit-reward margin on its pairs."""
    from selfreward_vlm.client import ScoringClient

    result, pairs_file = trained
    with ScoringClient(live_server) as client:
        client.upload_adapter("trained-margin", result.adapter_dir)
        margins = []
        for line in pairs_file.read_text().splitlines()[:8]:
            pair = json.loads(line)
            image = client.upload_image((pairs_file.parent / "images" /
                                         f"img{pair['id'][1:]}.png").read_bytes())  # fmt: skip
            reward = client.implicit_reward(
                pair["prompt"], [pair["chosen"], pair["rejected"]],
                policy="trained-margin", reference="base", beta=0.1, image=image,
            )  # fmt: skip
            chosen, rejected = reward.results
            margins.append(chosen.reward_sum - rejected.reward_sum)
    assert sum(margins) / len(margins) > 0.1
