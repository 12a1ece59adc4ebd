"""The TRL shim: called as TRL calls a reward function, and inside a real `GRPOTrainer` run on
the tiny VLM, against a real server. Its rewards must equal /v1/reward's numbers (per sentence,
each after the ones before it, then the mean) for the same completions."""

from __future__ import annotations

import asyncio
import io
import math
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from selfreward_vlm.client import ScoringClient
from selfreward_vlm.client._async import AsyncScoringClient
from selfreward_vlm.client.integrations import ImageUploader, RewardSpec, score_response
from selfreward_vlm.client.integrations.trl import SelfRewardReward, SyncSelfRewardReward
from selfreward_vlm.core.integrations import split_sentences

USER = "Describe the image."
RED, GREEN = Image.new("RGB", (32, 32), (200, 30, 30)), Image.new("RGB", (32, 32), (20, 200, 40))


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def native_reward(client: ScoringClient, image: Image.Image, response: str) -> float:
    """The independent number: /v1/reward per sentence, the prefix grown by hand."""
    image_id = client.upload_image(png(image))
    rewards, prefix = [], ""
    for sentence in split_sentences(response):
        out = client.reward(USER, [sentence], image=image_id, prefix=prefix)
        rewards.append(out.results[0].reward)
        prefix += sentence
    return sum(rewards) / len(rewards) if rewards else 0.0


def conversation(image: Image.Image | None = None) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = [{"type": "text", "text": USER}]
    if image is not None:  # as TRL's prepare_multimodal_messages leaves it
        content.insert(0, {"type": "image", "image": image})
    return [{"role": "user", "content": content}]


def test_called_as_trl_calls_it(live_server: str) -> None:
    texts = [" There is a red circle. It is big.", " A green square.", "", " no stop"]
    shim = SelfRewardReward(live_server)
    conv = asyncio.run(shim(
        prompts=[conversation(RED), conversation(GREEN), conversation(RED), conversation(RED)],
        completions=[[{"role": "assistant", "content": t}] for t in texts],
        completion_ids=[[1]] * 4, image=[RED, GREEN, RED, RED], trainer_state=None,
    ))  # fmt: skip
    with ScoringClient(live_server) as client:
        rows = zip([RED, GREEN, RED, RED], texts, strict=True)
        want = [native_reward(client, img, t) for img, t in rows]
        assert conv == pytest.approx(want, rel=1e-5)
        assert conv[2] == 0.0 and conv[0] != conv[3]
        # plain strings, an `images` column (lists), an image-less row and the clip reward
        plain = asyncio.run(SelfRewardReward(live_server)(
            prompts=[USER, USER], completions=texts[:2], images=[[GREEN], None]
        ))  # fmt: skip
        assert plain[0] == pytest.approx(native_reward(client, GREEN, texts[0]), rel=1e-5)
        assert plain[1] is None  # no image: that row has no calibrated reward, the run goes on
        clip = asyncio.run(SelfRewardReward(live_server, reward="clip", aggregation="sum")(
            prompts=[USER], completions=[texts[0]], image=[RED]
        ))  # fmt: skip
        sentences = [s.strip() for s in split_sentences(texts[0])]
        got = client.clip(client.upload_image(png(RED)), sentences).results
        assert clip == pytest.approx([sum(c.relevance for c in got)], rel=1e-5)
        implicit = asyncio.run(SelfRewardReward(live_server, reward="implicit")(
            prompts=[conversation()], completions=[texts[0]]
        ))  # fmt: skip
        assert implicit == pytest.approx([0.0], abs=1e-6)  # base vs base
    down = asyncio.run(SelfRewardReward("http://127.0.0.1:9", timeout=2)(
        prompts=[USER], completions=["A."], image=[RED]
    ))  # fmt: skip
    assert down == [None]


def test_sync_form_for_trainers_that_do_not_await(live_server: str) -> None:
    """OnlineDPOTrainer calls `reward_func(prompts=..., completions=..., ...)` and uses the
    list it returns; GRPO/RLOO await an async callable (trl.trainer.utils.is_async_callable)."""
    from trl.trainer.utils import is_async_callable

    shim = SyncSelfRewardReward(live_server)
    assert not is_async_callable(shim) and is_async_callable(SelfRewardReward(live_server))
    texts = [" There is a red circle. It is big.", " A green square."]
    kwargs = {"prompts": [USER, USER], "completions": texts, "completion_ids": [[1], [1]],
              "image": [RED, GREEN]}  # fmt: skip
    got = shim(**kwargs)
    assert got == shim(**kwargs)  # a second call opens a new client on a new loop
    assert got == asyncio.run(SelfRewardReward(live_server)(**kwargs))
    with ScoringClient(live_server) as client:
        assert got[1] == pytest.approx(native_reward(client, GREEN, texts[1]), rel=1e-5)


def test_too_many_sentences_raise_before_any_call() -> None:
    """A response's prefixes grow with the square of its sentences: over the cap it is a
    ValueError (a None row for TRL, `on_error` for verl), and nothing is sent."""

    class NoClient:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"client.{name} called")

    for kind in ("calibrated", "clip"):
        with pytest.raises(ValueError, match="65 sentences; at most 64"):
            asyncio.run(score_response(NoClient(), RewardSpec(kind), USER, " a." * 65, "id"))  # type: ignore[arg-type]


def test_unreadable_images_are_none_rows_and_files_are_read(
    live_server: str, tmp_path: Path
) -> None:
    """A numpy image (no PIL attributes) fails its own row only; a datasets image stored as a
    file (`{"bytes": None, "path": ...}`) is read, not sent as an image id; bytes are uploaded
    once across calls of the sync form (each call opens a new client)."""
    import numpy as np

    path = tmp_path / "green.png"
    path.write_bytes(png(GREEN))
    text = " A green square."
    shim = SyncSelfRewardReward(live_server)
    got = shim(prompts=[USER] * 3, completions=[text] * 3,
               image=[np.zeros((8, 8, 3), np.uint8), {"bytes": None, "path": str(path)},
                      png(GREEN)])  # fmt: skip
    with ScoringClient(live_server) as client:
        want = native_reward(client, GREEN, text)
    assert got[0] is None and got[1:] == pytest.approx([want, want], rel=1e-5)
    uploads: list[bytes] = []

    class Counting(AsyncScoringClient):
        async def upload_image(self, data: Any) -> str:
            uploads.append(data)
            return await super().upload_image(data)

    known: dict[str, str] = {}
    for _ in range(2):

        async def twice() -> None:
            async with Counting(live_server) as client:
                uploader = ImageUploader(client, known)
                assert await uploader.ref(png(GREEN)) == await uploader.ref(bytearray(png(GREEN)))

        asyncio.run(twice())
    assert len(uploads) == 1


class _Spy(SelfRewardReward):
    """Records what TRL passed and what the shim answered, call by call."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.calls: list[tuple[list[str], list[Any], list[float | None]]] = []

    async def __call__(self, prompts: Any, completions: Any, **kw: Any) -> list[float | None]:
        out = await super().__call__(prompts, completions, **kw)
        texts = [c[0]["content"] for c in completions]
        self.calls.append((texts, list(kw["image"]), out))
        return out


@pytest.mark.slow
def test_grpo_trainer_logs_the_service_rewards(
    live_server: str, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import GRPOConfig, GRPOTrainer

    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(tiny_models["vlm"])
    processor = AutoProcessor.from_pretrained(tiny_models["vlm"])
    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": USER}]] * 4,
                              "image": [RED, GREEN] * 2})  # fmt: skip
    spy = _Spy(live_server)
    args = GRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=2, num_generations=2,
        max_completion_length=12, max_steps=2, logging_steps=1, bf16=False, use_cpu=True,
        report_to="none", save_strategy="no", dataloader_pin_memory=False, seed=0,
        # the service refuses the image placeholder inside an answer: keep it out
        generation_kwargs={"bad_words_ids": [[model.config.image_token_id]]},
    )  # fmt: skip
    trainer = GRPOTrainer(
        model=model, reward_funcs=[spy], args=args, train_dataset=data, processing_class=processor
    )
    trainer.train()
    logged = [h[f"rewards/{spy.__name__}/mean"] for h in trainer.state.log_history
              if f"rewards/{spy.__name__}/mean" in h]  # fmt: skip
    assert len(logged) == len(spy.calls) == 2
    assert any(r != 0.0 for _, _, got in spy.calls for r in got)  # real sentences were scored
    with ScoringClient(live_server) as client:
        for (texts, images, got), mean in zip(spy.calls, logged, strict=True):
            assert all(g is not None for g in got), got
            want = [native_reward(client, img, t) for t, img in zip(texts, images, strict=True)]
            assert got == pytest.approx(want, rel=1e-5)
            assert mean == pytest.approx(math.fsum(want) / len(want), rel=1e-4)
