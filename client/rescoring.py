"""The published CSR code's scoring path, as a client wrapper: every generated candidate is
re-forwarded on its own (`/v1/logprobs`: image + prompt + prefix + candidate) to get R_T.

Our methods take R_T from the candidates' own generation log-probs instead; this wrapper is the
benchmark's baseline and lets a test check that both paths give the same numbers.
"""

from __future__ import annotations

from typing import Any

from selfreward_vlm.core.schemas import GenerateResponse


class RescoringClient:
    """Wraps an `AsyncScoringClient`; `generate` re-scores each candidate one request at a time."""

    def __init__(self, client: Any):
        self.client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    async def generate(self, prompt: str, **kw: Any) -> GenerateResponse:
        resp: GenerateResponse = await self.client.generate(prompt, **kw)
        for cand in resp.candidates:
            if cand.text:
                res = await self.client.logprobs(
                    prompt, [cand.text], image=kw.get("image"), prefix=kw.get("prefix", ""),
                    model=kw.get("model", "base"),
                )  # fmt: skip
                # The text has no EOS; its log-prob after the same tokens is the generated one.
                eos = cand.token_logprobs[-1:] if cand.finished else []
                cand.token_logprobs = res.results[0].token_logprobs + eos
        return resp
