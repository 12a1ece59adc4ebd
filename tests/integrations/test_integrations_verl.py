"""The verl shim, loaded and called as verl does (`get_custom_reward_fn`: the file imported by
path, `reward_kwargs` bound; the naive manager calls it per response in an executor thread,
the batch manager once per batch), against a real server; numbers equal /v1/reward's."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
from functools import partial

import pytest

import selfreward_vlm.client.integrations.verl as verl_shim
from selfreward_vlm.client import ScoringClient
from selfreward_vlm.client._async import AsyncScoringClient
from tests.integrations.test_integrations_trl import GREEN, RED, USER, native_reward, png

RESPONSES = [" There is a red circle. It is big.", " A green square."]


def load_as_verl(name: str, **reward_kwargs: object):
    """verl's loader: import the file by its path, bind the reward kwargs."""
    spec = importlib.util.spec_from_file_location("custom_module", verl_shim.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return partial(getattr(module, name), **reward_kwargs)


def test_compute_score_per_response_in_an_executor(live_server: str) -> None:
    fn = load_as_verl("compute_score", base_url=live_server)
    with ScoringClient(live_server) as client:
        red_id = client.upload_image(png(RED))
        infos = [
            {"image": red_id, "prompt": USER},
            {"image": {"bytes": png(GREEN), "path": None}, "prompt": USER},  # parquet's form
            {
                "images": ["data:image/png;base64," + base64.b64encode(png(RED)).decode()],
                "prompt": USER,
            },
        ]

        async def naive_manager() -> list[float]:
            loop = asyncio.get_running_loop()
            return [
                await loop.run_in_executor(None, lambda r=r, i=i: fn(
                    data_source="vqa", solution_str=r, ground_truth=None, extra_info=i))
                for r, i in zip([RESPONSES[0], RESPONSES[1], RESPONSES[1]], infos, strict=True)
            ]  # fmt: skip

        got = asyncio.run(naive_manager())
        pairs = [(RED, RESPONSES[0]), (GREEN, RESPONSES[1]), (RED, RESPONSES[1])]
        want = [native_reward(client, img, r) for img, r in pairs]
    assert got == pytest.approx(want, rel=1e-5)


def test_batched_form_and_failures(live_server: str) -> None:
    fn = load_as_verl("compute_score_batch", base_url=live_server, aggregation="sum")
    with ScoringClient(live_server) as client:
        image_ids = [client.upload_image(png(img)) for img in (RED, GREEN)]
        got = fn(data_sources=["a", "b"], solution_strs=RESPONSES, ground_truths=[None, None],
                 extra_infos=[{"image": i, "prompt": USER} for i in image_ids])  # fmt: skip
        want = [
            2 * native_reward(client, RED, RESPONSES[0]),
            native_reward(client, GREEN, RESPONSES[1]),
        ]
    assert got == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="needs an image"):
        fn(data_sources=["a"], solution_strs=["A."], ground_truths=[None],
           extra_infos=[{"prompt": USER}])  # fmt: skip
    with pytest.raises(ValueError, match="no 'prompt'"):  # not scored against "" silently
        fn(data_sources=["a"], solution_strs=["A."], ground_truths=[None],
           extra_infos=[{"image": image_ids[0]}])  # fmt: skip
    assert fn(data_sources=["a"], solution_strs=["A."], ground_truths=[None], extra_infos=[{}],
              on_error=0.0) == [0.0]  # fmt: skip

    async def inside_a_loop() -> float:  # called on an event loop's thread, it still works
        return verl_shim.compute_score("a", RESPONSES[1], None,
                                       {"image": image_ids[1], "prompt": USER},
                                       base_url=live_server)  # fmt: skip

    assert asyncio.run(inside_a_loop()) == pytest.approx(want[1], rel=1e-5)


def test_an_image_is_uploaded_once_per_process(
    live_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """verl calls once per response, each call a new client: the image ids outlive them."""
    uploads: list[object] = []
    real = AsyncScoringClient.upload_image

    async def counting(self: AsyncScoringClient, data: object) -> str:
        uploads.append(data)
        return await real(self, data)  # type: ignore[arg-type]

    monkeypatch.setattr(AsyncScoringClient, "upload_image", counting)
    fn = load_as_verl("compute_score", base_url=live_server)
    info = {"image": {"bytes": png(GREEN), "path": None}, "prompt": USER}
    got = [fn("vqa", RESPONSES[1], None, info) for _ in range(3)]
    assert len(uploads) == 1 and got[0] == got[1] == got[2]
    clip = load_as_verl("compute_score", base_url=live_server, reward="clip")
    assert clip("vqa", RESPONSES[1], None, {"image": info["image"]}) >= 0  # no prompt needed
