"""The client's exception tree; it mirrors the service's error `type`s (httpx/openai style).

```
SelfRewardError
├── APIConnectionError        no connection to any base URL (retried, fails over)
├── APITimeoutError           the server accepted the request but did not answer in time
└── APIStatusError            the server answered with an error status
    ├── BadRequestError       400 invalid_json
    ├── AuthenticationError   401 unauthorized
    ├── NotFoundError         404 not_found
    ├── ConflictError         409 conflict
    ├── PayloadTooLargeError  413 payload_too_large, image_too_large
    ├── InvalidRequestError   422 invalid_request, invalid_image, ... (`.field` names the field)
    ├── QueueFullError        429 queue_full (`.retry_after`, retried)
    └── InternalServerError   5xx
        ├── NotReadyError     503 not_ready (retried)
        │   └── StoreUnavailableError  503 store_unavailable (retried)
        └── InsufficientStorageError   507 insufficient_storage (`.field`: what is full)
```
"""

from __future__ import annotations

import httpx

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "InsufficientStorageError",
    "InternalServerError",
    "InvalidRequestError",
    "NotFoundError",
    "NotReadyError",
    "PayloadTooLargeError",
    "QueueFullError",
    "SelfRewardError",
    "StoreUnavailableError",
    "error_from_response",
]


class SelfRewardError(Exception):
    """Base of every error the client raises; carries the service's error fields."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.field = field


class APIConnectionError(SelfRewardError):
    """No base URL could be reached (refused, DNS, reset before a response)."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message, type="connection_error")
        self.url = url


class APITimeoutError(SelfRewardError):
    """The request was sent but no answer came within the timeout. Not retried: the server may
    still be working on it, and generation is expensive."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message, type="timeout")
        self.url = url


class APIStatusError(SelfRewardError):
    """The service answered with a 4xx/5xx; `status`, `type`, `message`, `field` come from its
    `{"error": {...}}` body."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        type: str,
        field: str | None = None,
        response: httpx.Response | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, type=type, field=field)
        self.response = response
        self.retry_after = retry_after  # the `Retry-After` header, seconds (429/503)

    @property
    def status_code(self) -> int:
        """Alias of `status` (httpx spelling)."""
        return int(self.status or 0)

    def __str__(self) -> str:
        where = f" (field {self.field!r})" if self.field else ""
        return f"{self.status} {self.type}: {self.message}{where}"


class BadRequestError(APIStatusError):
    """400: the body was not valid JSON."""


class AuthenticationError(APIStatusError):
    """401: missing or wrong bearer token."""


class NotFoundError(APIStatusError):
    """404: unknown image, dataset, adapter or path."""


class ConflictError(APIStatusError):
    """409: the resource exists in a conflicting state."""


class PayloadTooLargeError(APIStatusError):
    """413: the body, an image or an adapter is over the service's limit."""


class InvalidRequestError(APIStatusError):
    """422: a field's value cannot be served; `.field` names it (`invalid_image` too)."""


class QueueFullError(APIStatusError):
    """429: the batching queue is full; `.retry_after` is the server's hint in seconds."""


class InternalServerError(APIStatusError):
    """5xx: the service failed; it keeps serving."""


class NotReadyError(InternalServerError):
    """503: the models are not loaded/warm yet, or the service is shutting down."""


class StoreUnavailableError(NotReadyError):
    """503 `store_unavailable`: the pair store cannot be reached right now (its transaction
    was rolled back, nothing was written); retried, `Retry-After` honoured."""


class InsufficientStorageError(InternalServerError):
    """507 `insufficient_storage`: a disk of the service is full; `.field` names which
    (`store`, `adapters`, `adapter_store`). Nothing was written; the same request
    succeeds once the operator frees space (no restart). Not retried."""


# A wrong URL, key or adapter name: every later request would fail alike, so a run (pairs,
# eval) stops on these instead of recording the item as failed.
FATAL: tuple[type[SelfRewardError], ...] = (APIConnectionError, AuthenticationError, NotFoundError)

_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: InvalidRequestError,
    429: QueueFullError,
    503: NotReadyError,
    507: InsufficientStorageError,
}
# Where one status carries several error types, the type picks the class (a subclass of the
# status's class, so `except NotReadyError` still catches a store outage).
_BY_TYPE: dict[str, type[APIStatusError]] = {"store_unavailable": StoreUnavailableError}


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds from a numeric `Retry-After` header (HTTP dates are rare here: ignored)."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None


def _error_fields(response: httpx.Response) -> tuple[str, str, str | None]:
    """(type, message, field) from the service's error body, or a fallback for foreign bodies
    (a proxy's HTML 502, say)."""
    try:
        body = response.json()
        err = body["error"]
        return str(err["type"]), str(err["message"]), err.get("field")
    except (ValueError, KeyError, TypeError):
        text = response.text[:300].strip() or response.reason_phrase
        return f"http_{response.status_code}", text, None


def error_from_response(response: httpx.Response) -> APIStatusError:
    """Map an error response to the matching exception (one place, like the service's)."""
    status = response.status_code
    type_, message, field = _error_fields(response)
    cls = _BY_TYPE.get(type_) or _BY_STATUS.get(status)
    if cls is None:
        cls = InternalServerError if status >= 500 else APIStatusError
    return cls(
        message,
        status=status,
        type=type_,
        field=field,
        response=response,
        retry_after=_retry_after(response),
    )
