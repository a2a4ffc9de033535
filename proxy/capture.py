"""A bounded copy of a body as it streams past.

The proxy never holds more than ``limit`` bytes of any body for comparison:
past the limit the copy is dropped (and the comparison skipped), while the
bytes themselves keep flowing to their destination untouched.
"""

from __future__ import annotations

from collections.abc import Callable


class CaptureBudget:
    """Bytes held for comparison by every shadow job together.

    One body is bounded by the capture limit; this bounds their sum, so a
    burst of large answers (or a slow agent holding many jobs open) cannot
    grow the proxy's memory with the traffic.
    """

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def take(self, size: int) -> bool:
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def give(self, size: int) -> None:
        self.used -= size


class BodyCapture:
    __slots__ = ("_chunks", "_hold", "_release", "_size", "complete", "limit", "overflow")

    def __init__(
        self,
        limit: int,
        hold: Callable[[int], bool] | None = None,
        release: Callable[[int], None] | None = None,
    ) -> None:
        """``hold(n)`` asks a budget for ``n`` more bytes; refused, the copy is
        dropped and what it held goes back through ``release``."""
        self.limit = limit
        self._hold = hold
        self._release = release
        self._chunks: list[bytes] = []
        self._size = 0
        self.overflow = False
        self.complete = False

    def feed(self, chunk: bytes) -> bool:
        """Keep ``chunk`` if it fits; return False once the limit is passed."""
        if self.overflow:
            return False
        self._size += len(chunk)
        if self._size > self.limit or (self._hold is not None and not self._hold(len(chunk))):
            self.overflow = True
            self._chunks.clear()
            if self._release is not None:
                self._release(self._size - len(chunk))  # every chunk before this one was held
            return False
        self._chunks.append(chunk)
        return True

    @property
    def size(self) -> int:
        return self._size

    def value(self) -> bytes | None:
        """The whole body, or None when it was larger than the limit."""
        if self.overflow:
            return None
        if len(self._chunks) != 1:
            self._chunks[:] = [b"".join(self._chunks)]
        return self._chunks[0]
