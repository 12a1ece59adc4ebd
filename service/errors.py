"""Service errors: one exception tree, mapped to HTTP status codes in one place (`app.py`).

Every error leaves as `{"error": {"type", "message", "field"}}`; `type` is stable and the client
mirrors it with its own exception tree.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base of every error the service reports to a caller."""

    status_code = 500
    type = "internal_error"
    retry_after: float | None = None  # seconds; sent as `Retry-After` when set

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidRequestError(ServiceError):
    """The request is well-formed JSON but a field's value cannot be served."""

    status_code = 422
    type = "invalid_request"


class NotFoundError(ServiceError):
    status_code = 404
    type = "not_found"


class PayloadTooLargeError(ServiceError):
    status_code = 413
    type = "payload_too_large"


class UnauthorizedError(ServiceError):
    status_code = 401
    type = "unauthorized"


class ConflictError(ServiceError):
    status_code = 409
    type = "conflict"


class ModelUnavailableError(ServiceError):
    """The endpoint needs a model this service was started without (e.g. CLIP)."""

    status_code = 501
    type = "model_unavailable"


class QueueFullError(ServiceError):
    """The batching queue is full: come back after `retry_after` seconds."""

    status_code = 429
    type = "queue_full"
    retry_after: float  # always set

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotReadyError(ServiceError):
    status_code = 503
    type = "not_ready"
    retry_after = 1.0


class StoreUnavailableError(ServiceError):
    """The store cannot answer now (connection lost, server restarting, pool exhausted,
    serialization conflict): nothing was written; the same request may be retried."""

    status_code = 503
    type = "store_unavailable"

    def __init__(self, message: str, kind: str = "unavailable", retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.kind = kind  # the metric label: connection, timeout, conflict, busy, ...
        self.retry_after = retry_after


class InsufficientStorageError(ServiceError):
    """A disk is full (the store, or the adapter directory); `field` names which. Nothing was
    half-written; the same request works again once space is freed."""

    status_code = 507
    type = "insufficient_storage"
