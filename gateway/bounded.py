"""A memo dict bounded by the bytes of its keys, for caches keyed by what clients send.

A cap on the number of entries does not bound memory when the keys come from outside: a
thousand 100 KB "extensions" are a thousand entries and 100 MB. This dict counts each key's
size plus a fixed allowance for the entry and its value, and forgets the least recently
written entries once the total passes the budget. It is a memo: whatever it forgets is read
again from the source of truth on the next miss.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from typing import TypeVar

K = TypeVar("K", bound=str)
V = TypeVar("V")

# The dict slot, the linked-list node of OrderedDict and the tracker's value object (slots, a
# datetime, a one-item list): 234 bytes per entry by tracemalloc, plus ~85 for the call id string.
DEFAULT_ENTRY_OVERHEAD_BYTES = 320


class ByteBoundedDict(OrderedDict[K, V]):
    """An OrderedDict that drops its oldest entries when its estimated size passes `max_bytes`."""

    def __init__(self, max_bytes: int, entry_overhead_bytes: int = DEFAULT_ENTRY_OVERHEAD_BYTES) -> None:
        super().__init__()
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, not {max_bytes}")
        self.max_bytes = max_bytes
        self._entry_overhead_bytes = entry_overhead_bytes
        self.size_bytes = 0

    def _entry_bytes(self, key: K) -> int:
        return sys.getsizeof(key) + self._entry_overhead_bytes

    def __setitem__(self, key: K, value: V) -> None:
        if key in self:
            self.move_to_end(key)  # rewritten = recently used: the last to be forgotten
        else:
            self.size_bytes += self._entry_bytes(key)
        super().__setitem__(key, value)
        while self.size_bytes > self.max_bytes and len(self) > 1:
            oldest = next(iter(self))
            super().__delitem__(oldest)
            self.size_bytes -= self._entry_bytes(oldest)

    def __delitem__(self, key: K) -> None:
        super().__delitem__(key)
        self.size_bytes -= self._entry_bytes(key)

    def pop(self, key: K, *default: V) -> V:  # type: ignore[override]
        if key in self:
            self.size_bytes -= self._entry_bytes(key)
        return super().pop(key, *default)

    def popitem(self, last: bool = True) -> tuple[K, V]:
        key, value = super().popitem(last)
        self.size_bytes -= self._entry_bytes(key)
        return key, value

    def clear(self) -> None:
        super().clear()
        self.size_bytes = 0
