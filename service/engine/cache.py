"""Bounded caches of the model layer: an LRU, and a prefix KV cache with longest-prefix lookup.

A sentence-level search asks for image + prompt + prefix again and again, each time one sentence
longer. The prefix cache keeps the KV state of each prefix it has forwarded; a request whose
tokens start with a cached prefix forwards only the tokens after it (vLLM's automatic prefix
caching, at whole-entry rather than block granularity).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

V = TypeVar("V")


class LRUCache(Generic[V]):
    """A thread-safe LRU bounded by entry count (and optionally by a per-entry size)."""

    def __init__(
        self, max_entries: int, max_size: int = 0, size_of: Callable[[V], int] | None = None
    ):
        self.max_entries = max_entries
        self.max_size = max_size
        self._size_of = size_of or (lambda _v: 0)
        self._data: OrderedDict[Hashable, V] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    @property
    def size(self) -> int:
        return self._size

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: Hashable, value: V) -> None:
        if self.max_entries <= 0:
            return
        size = self._size_of(value)
        if self.max_size and size > self.max_size:
            return  # larger than the whole cache: keeping it would evict everything for nothing
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._size -= self._size_of(old)
            self._data[key] = value
            self._size += size
            while len(self._data) > self.max_entries or (
                self.max_size and self._size > self.max_size
            ):
                _, evicted = self._data.popitem(last=False)
                self._size -= self._size_of(evicted)

    def items(self) -> list[tuple[Hashable, V]]:
        with self._lock:
            return list(self._data.items())

    def clear(self, predicate: Callable[[Hashable], bool] | None = None) -> None:
        with self._lock:
            for key in [k for k in self._data if predicate is None or predicate(k)]:
                self._size -= self._size_of(self._data.pop(key))


@dataclass
class PrefixState:
    """The model's state after a token sequence: per-layer KV and the next-token log-probs.

    `kv` holds tensors of shape (1, heads, T, head_dim); they are never modified in place (a
    forward that extends them concatenates into new tensors), so entries can be shared.
    """

    namespace: tuple[Any, ...]  # (adapter, adapter version, image id): what tokens don't say
    token_ids: tuple[int, ...]
    kv: list[tuple[Any, Any]]
    next_logprobs: Any  # (V,) log-softmax after the last token
    # Position of the next text token minus `length`: 0 for 1-D positions; Qwen's M-RoPE gives
    # an image's tokens fewer positions than tokens, and text after them continues from there.
    rope_delta: int = 0

    @property
    def length(self) -> int:
        return len(self.token_ids)


class PrefixCache:
    """Prefix KV states keyed by (namespace, token ids); finds the longest cached prefix."""

    def __init__(self, max_entries: int, max_tokens: int):
        self._lru: LRUCache[PrefixState] = LRUCache(
            max_entries, max_tokens, size_of=lambda s: s.length
        )

    def __len__(self) -> int:
        return len(self._lru)

    @property
    def tokens(self) -> int:
        return self._lru.size

    def put(self, state: PrefixState) -> None:
        self._lru.put((state.namespace, state.token_ids), state)

    def longest_prefix(
        self, namespace: tuple[Any, ...], token_ids: Sequence[int], min_length: int = 1
    ) -> PrefixState | None:
        """The cached state whose tokens are the longest prefix of `token_ids` (≥ min_length)."""
        exact = self._lru.get((namespace, tuple(token_ids)))
        if exact is not None:
            return exact
        best: PrefixState | None = None
        for _, state in self._lru.items():
            ns, ids = state.namespace, state.token_ids
            n = len(ids)
            if ns != namespace or n < min_length or n > len(token_ids):
                continue
            if (best is None or n > best.length) and tuple(token_ids[:n]) == ids:
                best = state
        if best is not None:
            self._lru.get((best.namespace, best.token_ids))  # mark as recently used
        return best

    def clear(self, predicate: Callable[[tuple[Any, ...]], bool] | None = None) -> None:
        """Drop entries whose namespace matches (e.g. an adapter that was replaced)."""
        self._lru.clear(None if predicate is None else lambda key: predicate(key[0]))  # type: ignore[index]
