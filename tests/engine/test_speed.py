"""The speed work changes no number: naive and optimized services give the same CSR search.

(The published code's re-scoring path, `RescoringClient`, re-tokenizes decoded text; on the
tiny byte-level tokenizer that does not always round-trip, so only its cost is compared here.
Generation log-probs equal a direct forward of the same ids: tests/engine/test_engine.py.)"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import httpx
import pytest
from PIL import Image

from selfreward_vlm.client import AsyncScoringClient
from selfreward_vlm.client.methods.base import PromptItem, RunContext
from selfreward_vlm.client.methods.csr import CSRConfig, csr
from selfreward_vlm.client.rescoring import RescoringClient
from tests.conftest import start_server, stop_server

pytestmark = pytest.mark.slow
CFG = CSRConfig(num_candidates=3, num_beam_groups=3, max_new_tokens=6, max_steps=2,
                language_score="mean_logprob")  # fmt: skip


class Meter(httpx.AsyncBaseTransport):
    """Adds up `usage.tokens_forwarded` of every response."""

    def __init__(self) -> None:
        self.inner, self.forwarded = httpx.AsyncHTTPTransport(), 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        body = await response.aread()
        if response.status_code == 200 and request.url.path.startswith("/v1/"):
            self.forwarded += response.json().get("usage", {}).get("tokens_forwarded", 0)
        return httpx.Response(response.status_code, headers=response.headers, content=body)


def png(k: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (60 * k, 200 - 50 * k, 90)).save(buf, format="PNG")
    return buf.getvalue()


async def search(url: str, rescore: bool) -> tuple[list, int]:
    meter = Meter()
    async with AsyncScoringClient(url, transport=meter) as client:
        scorer = RescoringClient(client) if rescore else client
        out = []
        for k in range(2):
            item = PromptItem(str(k), "Describe the image.", await client.upload_image(png(k)))
            result = await csr(scorer, item, RunContext(), CFG)
            out += [(p.chosen, p.rejected, p.chosen_score.reward, p.rejected_score.reward)
                    for p in result.pairs]  # fmt: skip
    return out, meter.forwarded


def test_naive_and_optimized_give_the_same_search(
    live_server: str, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    proc, naive_url = start_server(tiny_models, tmp_path / "naive", "--naive")
    try:
        naive, naive_fwd = asyncio.run(search(naive_url, rescore=False))
        _, rescored_fwd = asyncio.run(search(naive_url, rescore=True))
    finally:
        stop_server(proc)
    fast, fast_fwd = asyncio.run(search(live_server, rescore=False))
    assert naive and len(naive) == len(fast)
    for (c1, r1, sc1, sr1), (c2, r2, sc2, sr2) in zip(naive, fast, strict=True):
        assert (c1, r1) == (c2, r2)
        assert sc1 == pytest.approx(sc2, abs=1e-4) and sr1 == pytest.approx(sr2, abs=1e-4)
    assert fast_fwd < naive_fwd  # the prefix/candidate caches forward fewer tokens...
    assert fast_fwd * 3 < rescored_fwd  # ...than re-forwarding every candidate, by far
