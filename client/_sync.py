"""`ScoringClient`: the blocking client. Its twin `AsyncScoringClient` shares `client._base`."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import tenacity

from selfreward_vlm.client import _base as b
from selfreward_vlm.client.errors import (
    APIConnectionError,
    APITimeoutError,
    NotReadyError,
    SelfRewardError,
)
from selfreward_vlm.core import defaults
from selfreward_vlm.core.schemas import (
    AdapterInfo,
    AdapterList,
    ClipRequest,
    ClipResponse,
    DatasetList,
    GenerateRequest,
    GenerateResponse,
    ImageUploadResponse,
    ImplicitRewardRequest,
    ImplicitRewardResponse,
    InfoResponse,
    LanguageScore,
    LogprobsRequest,
    LogprobsResponse,
    PairsPage,
    PairsUpsertRequest,
    PairsUpsertResponse,
    PreferencePair,
    RewardRequest,
    RewardResponse,
)


class ScoringClient(b.BaseClient):
    """Typed blocking client of the selfreward service.

    `base_url` may list several replicas: calls rotate round-robin across them and a connection
    error fails over to the next one. Connection errors, 429 and 503 are retried `max_retries`
    times with exponential backoff and jitter (the server's `Retry-After` wins).
    """

    def __init__(
        self,
        base_url: str | Sequence[str],
        *,
        timeout: float | httpx.Timeout = b.DEFAULT_TIMEOUT,
        api_key: str | None = None,
        max_retries: int = 3,
        transport: httpx.BaseTransport | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(base_url, api_key=api_key, max_retries=max_retries, headers=headers)
        self._http = httpx.Client(timeout=timeout, transport=transport, headers=self.headers)
        self._sleep = time.sleep  # tests patch this to skip backoff

    # ------------------------------------------------------------------ plumbing

    def _attempt(self, spec: b.RequestSpec) -> httpx.Response:
        """One attempt: the rotation's first URL, failing over on connection errors."""
        error: SelfRewardError | None = None
        for base in self.url_order(spec):
            try:
                response = self._http.send(self.build(self._http, spec, base))
                if missing := self.reuploads(spec, response):  # a replica lacks its images
                    for data in missing:
                        upload = self.build(self._http, b.upload_image_spec(data), base)
                        b.check(self._http.send(upload))
                    response = self._http.send(self.build(self._http, spec, base))
            except httpx.TransportError as exc:
                error = b.transport_error(exc, base)
                if isinstance(error, APIConnectionError):
                    continue
                raise error from exc
            return b.check(response)
        assert error is not None
        raise error

    def _send(self, spec: b.RequestSpec) -> httpx.Response:
        if not spec.retry:
            return self._attempt(spec)
        retrying = tenacity.Retrying(sleep=self._sleep, **self.retry_policy())
        return retrying(self._attempt, spec)

    def _post(self, path: str, request: Any, model: type[b.M]) -> b.M:
        return b.parse(self._send(b.post_json(path, request)), model)

    def _get(self, path: str, model: type[b.M]) -> b.M:
        return b.parse(self._send(b.RequestSpec("GET", path)), model)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> ScoringClient:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ images

    def upload_image(self, data: bytes | str | Path) -> str:
        """Store an image (bytes or a file path) once; returns its id. Cached by sha256, so the
        same bytes are uploaded once per client."""
        raw = b.read_image(data)
        digest, known = self.cached_image_id(raw)
        if known is not None:
            return known
        out = b.parse(self._send(b.upload_image_spec(raw)), ImageUploadResponse)
        self.remember_image(digest, out.id, raw)
        return out.id

    def get_image(self, image_id: str) -> bytes:
        """The stored bytes of an image."""
        return self._send(b.RequestSpec("GET", f"/v1/images/{image_id}")).content

    # ------------------------------------------------------------------ scoring

    def logprobs(
        self,
        prompt: str,
        continuations: Sequence[str],
        *,
        image: b.ImageLike = None,
        prefix: str = "",
        model: str = "base",
    ) -> LogprobsResponse:
        """Per-token log-probs of each continuation after image + prompt (+ prefix)."""
        req = LogprobsRequest(
            model=model,
            image=b.image_ref(image),
            prompt=prompt,
            prefix=prefix,
            continuations=list(continuations),
        )
        return self._post("/v1/logprobs", req, LogprobsResponse)

    def clip(
        self, image: b.ImageLike, texts: Sequence[str], *, scale: float = defaults.CLIP_SCALE
    ) -> ClipResponse:
        """CLIP cosine and relevance R_I = max(scale·cos, 0) of each text against the image."""
        req = ClipRequest(image=b.require_image(image), texts=list(texts), scale=scale)
        return self._post("/v1/clip", req, ClipResponse)

    def reward(
        self,
        prompt: str,
        candidates: Sequence[str],
        *,
        image: b.ImageLike,
        prefix: str = "",
        model: str = "base",
        lam: float = defaults.LAMBDA,
        language_score: LanguageScore = "prob",
        scale: float = defaults.CLIP_SCALE,
    ) -> RewardResponse:
        """Calibrated reward R = λ·R_I + (1−λ)·R_T of candidate next sentences (CSR eq. 4)."""
        req = RewardRequest.model_validate(
            {
                "model": model, "image": b.require_image(image), "prompt": prompt,
                "prefix": prefix, "candidates": list(candidates), "lambda": lam,
                "language_score": language_score, "scale": scale,
            }
        )  # fmt: skip
        return self._post("/v1/reward", req, RewardResponse)

    def implicit_reward(
        self,
        prompt: str,
        responses: Sequence[str],
        *,
        policy: str,
        reference: str = "base",
        beta: float = defaults.IMPLICIT_BETA,
        image: b.ImageLike = None,
    ) -> ImplicitRewardResponse:
        """DPO implicit reward β·(log π_policy − log π_ref) of whole responses, sum and avg."""
        req = ImplicitRewardRequest(
            policy=policy,
            reference=reference,
            beta=beta,
            image=b.image_ref(image),
            prompt=prompt,
            responses=list(responses),
        )
        return self._post("/v1/implicit-reward", req, ImplicitRewardResponse)

    def generate(
        self,
        prompt: str,
        *,
        image: b.ImageLike = None,
        prefix: str = "",
        model: str = "base",
        **options: Any,
    ) -> GenerateResponse:
        """Candidates with raw token log-probs. `options` are the other GenerateRequest fields:
        strategy, n, num_beam_groups, diversity_penalty, temperature, top_p, seed, stop,
        stop_text, max_new_tokens."""
        req = GenerateRequest(
            model=model, image=b.image_ref(image), prompt=prompt, prefix=prefix, **options
        )
        return self._post("/v1/generate", req, GenerateResponse)

    # ------------------------------------------------------------------ pairs store

    def upsert_pairs(self, dataset: str, pairs: Sequence[PreferencePair]) -> PairsUpsertResponse:
        """Idempotent upsert (by pair id), in batches; the counts are summed over batches."""
        total: PairsUpsertResponse | None = None
        for i in range(0, len(pairs), b.PAIRS_BATCH):
            req = PairsUpsertRequest(pairs=list(pairs[i : i + b.PAIRS_BATCH]))
            out = self._post(f"/v1/datasets/{dataset}/pairs", req, PairsUpsertResponse)
            total = out if total is None else b.add_counts(total, out)
        if total is None:
            return PairsUpsertResponse(dataset=dataset, inserted=0, duplicates=0, total=0)
        return total

    def pairs_page(self, dataset: str, after: str | None = None, limit: int = 100) -> PairsPage:
        """One cursor page of a dataset's pairs."""
        return b.parse(self._send(b.pairs_page_spec(dataset, after, limit)), PairsPage)

    def iter_pairs(self, dataset: str, page_size: int = 100) -> Iterator[PreferencePair]:
        """Every pair of a dataset, following the cursor page by page."""
        cursor: str | None = None
        while True:
            page = self.pairs_page(dataset, cursor, page_size)
            yield from page.pairs
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def list_datasets(self) -> DatasetList:
        """Datasets in the store with their pair counts."""
        return self._get("/v1/datasets", DatasetList)

    # ------------------------------------------------------------------ adapters

    def upload_adapter(self, name: str, directory: str | Path) -> AdapterInfo:
        """Upload a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors)."""
        return b.parse(self._send(b.adapter_upload_spec(name, directory)), AdapterInfo)

    def list_adapters(self) -> AdapterList:
        return self._get("/v1/adapters", AdapterList)

    def delete_adapter(self, name: str) -> None:
        """Unload and forget an adapter."""
        self._send(b.RequestSpec("DELETE", f"/v1/adapters/{name}"))

    # ------------------------------------------------------------------ operations

    def health(self) -> dict[str, Any]:
        """Liveness body of GET /health."""
        return dict(self._send(b.RequestSpec("GET", "/health")).json())

    def info(self) -> InfoResponse:
        """Models, adapters, limits and versions the service runs."""
        return self._get("/info", InfoResponse)

    def metrics(self) -> str:
        """Prometheus exposition text."""
        return self._send(b.RequestSpec("GET", "/metrics")).text

    def ready(self) -> bool:
        """True when every base URL answers /ready with 200 (503 = still warming)."""
        for base in self.base_urls:
            try:
                self._send(b.RequestSpec("GET", "/ready", retry=False, url=base))
            except NotReadyError:
                return False
        return True

    def wait_until_ready(self, timeout: float = 300.0, interval: float = 0.5) -> None:
        """Poll ready() until True; connection errors count as not ready yet."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if self.ready():
                    return
            except APIConnectionError as exc:
                last = exc
            time.sleep(interval)
        raise APITimeoutError(f"service not ready after {timeout}s (last error: {last})")
