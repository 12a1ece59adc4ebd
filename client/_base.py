"""The one request layer under `ScoringClient` and `AsyncScoringClient` (httpx's pattern).

Endpoint methods build a `RequestSpec` here (pure, no I/O); the sync and async clients only
differ in how they send it. Base-URL rotation, failover order, the retry policy (tenacity:
connection errors, 429 and 503 only, `Retry-After` honoured) and response parsing live here
too, so both clients behave identically.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import tenacity
from pydantic import BaseModel

from selfreward_vlm.client.errors import (
    APIConnectionError,
    APITimeoutError,
    NotReadyError,
    QueueFullError,
    SelfRewardError,
    error_from_response,
)
from selfreward_vlm.core.schemas import ImageRef, PairsUpsertResponse

M = TypeVar("M", bound=BaseModel)
ImageLike = str | ImageRef | None  # an image id from upload_image, or an ImageRef
DEFAULT_TIMEOUT = httpx.Timeout(300.0, connect=10.0)  # generation on a big model is slow
PAIRS_BATCH = 500  # pairs per upsert request (the service caps a batch, 1000 by default)
MAX_RETRY_AFTER = 60.0  # never sleep longer than this on a server's Retry-After hint
# Image bytes a client keeps (LRU) to upload again to a replica that lacks them.
MAX_REUPLOAD_BYTES = 256 * 2**20

_MAGIC = [
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
]


@dataclass(frozen=True)
class RequestSpec:
    """Everything needed to send one API call, independent of sync/async and base URL."""

    method: str
    path: str
    json: Any = None
    content: bytes | None = None
    params: dict[str, Any] | None = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    data: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    retry: bool = True  # readiness probes ask once
    url: str | None = None  # pin one base URL (probes); None = rotate


class BaseClient:
    """Configuration and pure helpers shared by both clients."""

    def __init__(
        self,
        base_url: str | Sequence[str],
        *,
        api_key: str | None = None,
        max_retries: int = 3,
        headers: dict[str, str] | None = None,
    ) -> None:
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls:
            raise ValueError("give at least one base_url")
        self.base_urls = [u.rstrip("/") for u in urls]
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        self.max_retries = max_retries
        self.headers = {"accept": "application/json", **(headers or {})}
        if api_key:
            self.headers["authorization"] = f"Bearer {api_key}"
        self._turn = itertools.count()
        self._image_ids: dict[str, str] = {}  # sha256 of bytes -> service image id
        self._image_bytes: OrderedDict[str, bytes] = OrderedDict()  # image id -> bytes (LRU)
        self._image_bytes_total = 0

    # ------------------------------------------------------------------ routing and retries

    def url_order(self, spec: RequestSpec) -> list[str]:
        """Base URLs to try for one attempt: round-robin start, then the others as failover."""
        if spec.url is not None:
            return [spec.url.rstrip("/")]
        start = next(self._turn) % len(self.base_urls)
        return self.base_urls[start:] + self.base_urls[:start]

    def build(self, http: httpx.Client | httpx.AsyncClient, spec: RequestSpec, base: str):
        """The httpx.Request for `spec` against one base URL."""
        return http.build_request(
            spec.method,
            base + spec.path,
            json=spec.json,
            content=spec.content,
            params=spec.params,
            files=spec.files,
            data=spec.data,
            headers=spec.headers or None,
        )

    def retry_policy(self) -> dict[str, Any]:
        """tenacity arguments: retry connection errors, 429 and 503, at most `max_retries`."""
        return {
            "stop": tenacity.stop_after_attempt(self.max_retries + 1),
            "wait": _wait,
            "retry": tenacity.retry_if_exception_type(
                (APIConnectionError, QueueFullError, NotReadyError)
            ),
            "reraise": True,
        }

    # ------------------------------------------------------------------ images

    def cached_image_id(self, data: bytes) -> tuple[str, str | None]:
        """(sha256 of the bytes, the id already uploaded for them or None)."""
        digest = hashlib.sha256(data).hexdigest()
        return digest, self._image_ids.get(digest)

    def remember_image(self, digest: str, image_id: str, data: bytes | None = None) -> None:
        """Cache an upload's id, and its bytes (bounded) for re-uploads to other replicas."""
        self._image_ids[digest] = image_id
        if data is None or len(data) > MAX_REUPLOAD_BYTES or image_id in self._image_bytes:
            return
        self._image_bytes[image_id] = data
        self._image_bytes_total += len(data)
        while self._image_bytes_total > MAX_REUPLOAD_BYTES:
            _, dropped = self._image_bytes.popitem(last=False)
            self._image_bytes_total -= len(dropped)

    def reuploads(self, spec: RequestSpec, response: httpx.Response) -> list[bytes]:
        """The bytes of the images to upload again before retrying `spec`: those it names
        that this client uploaded, when the replica answered `404 image_not_found` (replicas
        that do not share a store each need the image once)."""
        if response.status_code != 404 or spec.path == "/v1/images" or not self._image_bytes:
            return []
        try:
            type_ = response.json()["error"]["type"]
        except (ValueError, KeyError, TypeError):
            return []
        if type_ != "image_not_found":
            return []
        named = _strings_in(spec.json)
        return [data for image_id, data in self._image_bytes.items() if image_id in named]


def _strings_in(value: Any) -> set[str]:
    """Every string inside a JSON value (image ids sit in `image.id` and `pairs[].images`)."""
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return set().union(*map(_strings_in, value)) if value else set()
    return set()


_backoff = tenacity.wait_exponential_jitter(initial=0.5, max=8.0, jitter=0.5)


def _wait(state: tenacity.RetryCallState) -> float:
    """The server's Retry-After when it gave one, else exponential backoff with jitter."""
    exc = state.outcome.exception() if state.outcome else None
    hint = getattr(exc, "retry_after", None)
    if hint is not None:
        return min(float(hint), MAX_RETRY_AFTER)
    return float(_backoff(state))


def transport_error(exc: httpx.TransportError, url: str) -> SelfRewardError:
    """Map an httpx transport failure: could-not-connect fails over, a read timeout does not."""
    if isinstance(exc, httpx.ConnectTimeout):
        return APIConnectionError(f"connect timeout to {url}: {exc}", url=url)
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"timed out waiting for {url}: {exc!r}", url=url)
    return APIConnectionError(f"cannot reach {url}: {exc!r}", url=url)


def check(response: httpx.Response) -> httpx.Response:
    """Raise the typed error for a 4xx/5xx; return the response otherwise."""
    if response.status_code >= 400:
        raise error_from_response(response)
    return response


def parse(response: httpx.Response, model: type[M]) -> M:
    """Validate a JSON body into a core.schemas model."""
    return model.model_validate(response.json())


# ---------------------------------------------------------------------- request specs


def read_image(data: bytes | str | Path) -> bytes:
    """Image bytes from bytes or a file path."""
    if isinstance(data, bytes | bytearray):
        return bytes(data)
    return Path(data).read_bytes()


def sniff_content_type(data: bytes) -> str:
    """The image MIME type from magic bytes (the service validates the bytes anyway)."""
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def image_ref(image: ImageLike) -> ImageRef | None:
    """An image argument (an id string or an ImageRef) as an ImageRef."""
    if image is None or isinstance(image, ImageRef):
        return image
    return ImageRef.model_validate({"id": image})


def require_image(image: ImageLike) -> ImageRef:
    """image_ref for endpoints where the image is mandatory (CLIP)."""
    ref = image_ref(image)
    if ref is None:
        raise ValueError("this endpoint needs an image")
    return ref


def post_json(path: str, request: BaseModel) -> RequestSpec:
    """A POST of a validated request model (aliases on, unset optionals left out)."""
    body = request.model_dump(mode="json", by_alias=True, exclude_none=True)
    return RequestSpec("POST", path, json=body)


def upload_image_spec(data: bytes) -> RequestSpec:
    return RequestSpec(
        "POST", "/v1/images", content=data, headers={"content-type": sniff_content_type(data)}
    )


def pairs_page_spec(dataset: str, after: str | None, limit: int) -> RequestSpec:
    params: dict[str, Any] = {"limit": limit}
    if after is not None:
        params["after"] = after
    return RequestSpec("GET", f"/v1/datasets/{dataset}/pairs", params=params)


def adapter_upload_spec(name: str, directory: str | Path) -> RequestSpec:
    """Multipart upload of a PEFT adapter folder (config + safetensors weights)."""
    folder = Path(directory)
    files = []
    for fname, mime in [
        ("adapter_config.json", "application/json"),
        ("adapter_model.safetensors", "application/octet-stream"),
    ]:
        path = folder / fname
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: an adapter folder needs {fname}")
        # the service reads each file from the form field named like the file
        files.append((fname, (fname, path.read_bytes(), mime)))
    return RequestSpec("POST", "/v1/adapters", files=files, data={"name": name})


def add_counts(a: PairsUpsertResponse, c: PairsUpsertResponse) -> PairsUpsertResponse:
    """Counts of two upsert batches of one dataset, summed (`total` is the later one's)."""
    return PairsUpsertResponse(
        dataset=a.dataset,
        inserted=a.inserted + c.inserted,
        duplicates=a.duplicates + c.duplicates,
        total=c.total,
    )
