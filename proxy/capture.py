"""A bounded copy of a body as it streams past.

The proxy never holds more than ``limit`` bytes of any body for comparison:
past the limit the copy is dropped (and the comparison skipped), while the
bytes themselves keep flowing to their destination untouched.
"""

from __future__ import annotations


class BodyCapture:
    __slots__ = ("_chunks", "_size", "complete", "limit", "overflow")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self.overflow = False
        self.complete = False

    def feed(self, chunk: bytes) -> bool:
        """Keep ``chunk`` if it fits; return False once the limit is passed."""
        if self.overflow:
            return False
        self._size += len(chunk)
        if self._size > self.limit:
            self.overflow = True
            self._chunks.clear()
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
