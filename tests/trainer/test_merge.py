"""Merge + fresh LoRA per iteration (`trainer.merge`): stacked adapters and merged models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")


def _adapter(folder: Path, r: int, alpha: int, seed: int, out: int = 6, inp: int = 4) -> None:
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    key = "base_model.model.layers.0.q_proj"
    save_file({f"{key}.lora_A.weight": torch.randn(r, inp, generator=g),
               f"{key}.lora_B.weight": torch.randn(out, r, generator=g)},
              str(folder / "adapter_model.safetensors"))  # fmt: skip
    folder.joinpath("adapter_config.json").write_text(json.dumps(
        {"r": r, "lora_alpha": alpha, "target_modules": ["q_proj"], "peft_type": "LORA",
         "task_type": "CAUSAL_LM", "base_model_name_or_path": "m"}))  # fmt: skip


def test_stacked_adapter_is_the_sum_of_updates(tmp_path: Path) -> None:
    """B·A of the stack (α = r, scale 1) = s_1·B_1·A_1 + s_2·B_2·A_2, s_i = α_i/r_i."""
    from safetensors.torch import load_file

    from selfreward_vlm.trainer.merge import stack_adapters

    for name, r, alpha, seed in (("a", 2, 4, 0), ("b", 3, 3, 1)):
        (tmp_path / name).mkdir()
        _adapter(tmp_path / name, r, alpha, seed)
    out = stack_adapters([tmp_path / "a", tmp_path / "b"], tmp_path / "stacked")
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (5, 5)

    def delta(folder: Path, scale: float) -> torch.Tensor:
        w = load_file(str(folder / "adapter_model.safetensors"))
        a, b = (w[k] for k in sorted(w))  # lora_A, lora_B
        return scale * b @ a

    want = delta(tmp_path / "a", 4 / 2) + delta(tmp_path / "b", 3 / 3)
    assert torch.allclose(delta(out, 1.0), want, atol=1e-5)


def test_stacking_refuses_different_targets(tmp_path: Path) -> None:
    from selfreward_vlm.trainer.merge import StackError, stack_adapters

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        _adapter(tmp_path / name, 2, 4, 0)
    cfg = json.loads((tmp_path / "b" / "adapter_config.json").read_text())
    (tmp_path / "b" / "adapter_config.json").write_text(
        json.dumps({**cfg, "target_modules": ["v_proj"]})
    )
    with pytest.raises(StackError, match="target_modules"):
        stack_adapters([tmp_path / "a", tmp_path / "b"], tmp_path / "s")


def test_merged_model_with_fresh_lora_equals_stacked_adapter_on_base(tmp_path: Path) -> None:
    """M_1 = base with adapter 1 merged; a second LoRA trained on M_1 and stacked onto adapter
    1 gives the service (base + stacked LoRA) the same logits as M_1 + LoRA 2."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from selfreward_vlm.trainer.merge import merged_model, stack_adapters

    torch.manual_seed(0)
    base_dir = tmp_path / "base"
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2)  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(base_dir)
    vocab = {f"t{i}": i for i in range(32)}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, "t0")))
    tok.save_pretrained(base_dir)

    def lora(model_dir: Path, out: Path, seed: int) -> None:
        torch.manual_seed(seed)
        config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
        model = get_peft_model(LlamaForCausalLM.from_pretrained(model_dir), config)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.5)
        model.save_pretrained(out)

    lora(base_dir, tmp_path / "a1", 1)
    m1 = merged_model(str(base_dir), tmp_path / "a1", tmp_path / "m1")
    lora(m1, tmp_path / "fresh2", 2)
    stacked = stack_adapters([tmp_path / "a1", tmp_path / "fresh2"], tmp_path / "a2")
    ids = torch.tensor([[1, 5, 7, 3]])
    with torch.no_grad():
        official = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(m1),
                                             str(tmp_path / "fresh2"))(ids).logits  # fmt: skip
        served = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base_dir),
                                           str(stacked))(ids).logits  # fmt: skip
        base = LlamaForCausalLM.from_pretrained(base_dir)(ids).logits
    assert not torch.allclose(official, base, atol=1e-3)
    assert torch.allclose(official, served, atol=1e-4)


def test_iterate_merge_lever_trains_fresh_on_the_merged_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`merge_adapter`: iteration 1 trains on the base; iteration 2 on the base with adapter 1
    merged, reference = that model (no previous adapter handed to the trainer); adapter t on
    disk (what the service and the evaluator get) is the stack of every fresh LoRA so far."""
    from safetensors.torch import load_file

    from selfreward_vlm.trainer import iterate as it
    from selfreward_vlm.trainer import merge

    calls: list[dict[str, object]] = []

    def fake_train(service: str, model: str, dataset: str, out: Path, previous: Path | None,
                   previous_name: str, overrides: dict[str, object],
                   launcher: str | None = None) -> dict[str, object]:  # fmt: skip
        calls.append({"model": model, "out": out, "previous": previous, "ref": previous_name,
                      "overrides": overrides})  # fmt: skip
        (out / "adapter").mkdir(parents=True)
        _adapter(out / "adapter", 2, 4, seed=len(calls))
        return {"steps": 1}

    merges: list[tuple[str, Path, Path]] = []

    def fake_merged(model: str, adapter: Path, out: Path) -> Path:
        merges.append((model, adapter, out))
        return out

    monkeypatch.setattr(it, "_train", fake_train)
    monkeypatch.setattr(merge, "merged_model", fake_merged)
    levers = {"merge_adapter": True, "lr": 1e-7}
    state = it.IterationState(tmp_path)
    loop = it._Loop("http://s", "csr", "p", "i", tmp_path, "r", "BASE", levers, {}, state, None)
    loop._train_merged(1, loop.adapter_dir(0))
    loop._train_merged(2, loop.adapter_dir(1))
    assert [c["model"] for c in calls] == ["BASE", str(tmp_path / "iter1" / "merged")]
    assert all(c["previous"] is None for c in calls)  # reference = the model trained on
    assert "merge_adapter" not in calls[1]["overrides"]  # type: ignore[operator]
    assert merges == [
        ("BASE", tmp_path / "iter1" / "train" / "adapter", tmp_path / "iter1" / "merged")
    ]
    stacked = load_file(str(tmp_path / "iter2" / "train" / "adapter" / "adapter_model.safetensors"))
    assert next(v for k, v in stacked.items() if "lora_A" in k).shape[0] == 4  # 2 + 2 ranks
