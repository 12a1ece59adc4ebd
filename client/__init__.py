"""selfreward client: typed sync/async HTTP clients of the scoring service, the pair-building
methods (CSR, CSR-official, SBSPO, self-judge) and the `pairs` command.

Imports no torch, transformers, open_clip or fastapi: a laptop installs only this and talks to a
remote GPU box.
"""

from selfreward_vlm.client._async import AsyncScoringClient
from selfreward_vlm.client._sync import ScoringClient
from selfreward_vlm.client.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InsufficientStorageError,
    InternalServerError,
    InvalidRequestError,
    NotFoundError,
    NotReadyError,
    PayloadTooLargeError,
    QueueFullError,
    SelfRewardError,
    StoreUnavailableError,
)

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncScoringClient",
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
    "ScoringClient",
    "SelfRewardError",
    "StoreUnavailableError",
]
