"""A KV cache layer that appends in place: decoding one token per step must not re-copy the
whole prefix KV every step, which `DynamicLayer` does (`torch.cat` per layer per step: 80 % of
a 5-beam search's time on a ~100M decoder with a 700-token prefix, measured on CPU)."""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer


class BufferLayer(DynamicLayer):
    """Keys/values in a preallocated (B, H, capacity, D) buffer; `keys`/`values` are views of
    its filled part. Appending writes after them; reordering rows copies the filled part once."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int):
        super().__init__()
        self.device = keys.device
        self.is_initialized = True
        self.filled = keys.shape[-2]
        self._k = self._alloc(keys, max(capacity, self.filled))
        self._v = self._alloc(values, max(capacity, self.filled))
        self._views()

    @staticmethod
    def _alloc(src: torch.Tensor, capacity: int) -> torch.Tensor:
        b, h, n, d = src.shape
        buf = src.new_empty((b, h, capacity, d))
        buf[:, :, :n] = src
        return buf

    def _views(self) -> None:
        self.keys = self._k[:, :, : self.filled]
        self.values = self._v[:, :, : self.filled]

    def update(  # type: ignore[override]
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = key_states.shape[-2]
        if self.filled + n > self._k.shape[-2]:  # out of room: grow (rare: capacity is sized)
            self._k = self._alloc(self._k[:, :, : self.filled], 2 * (self.filled + n))
            self._v = self._alloc(self._v[:, :, : self.filled], 2 * (self.filled + n))
        self._k[:, :, self.filled : self.filled + n] = key_states
        self._v[:, :, self.filled : self.filled + n] = value_states
        self.filled += n
        self._views()
        assert self.keys is not None and self.values is not None
        return self.keys, self.values

    def row(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A copy of row `i`'s filled KV, (1, H, filled, D) each (a view would keep the whole
        multi-row buffer alive wherever it is kept)."""
        n = self.filled
        return self._k[i : i + 1, :, :n].clone(), self._v[i : i + 1, :, :n].clone()

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep `rows` (indices, repeats allowed) in this order: one copy of the filled part."""
        capacity = self._k.shape[-2]
        self._k = self._alloc(self._k[:, :, : self.filled].index_select(0, rows), capacity)
        self._v = self._alloc(self._v[:, :, : self.filled].index_select(0, rows), capacity)
        self._views()

    def truncate(self, filled: int) -> None:
        """Forget everything after the first `filled` tokens (a step that failed midway)."""
        self.filled = filled
        self._views()
