"""Server-sent events cut out of a byte stream, chunk by chunk, with bounded memory.

The proxy reads agent streams from a copy of the bytes as they pass to the
client, so the decoder sees arbitrary chunk boundaries (inside a line, inside
a CRLF) and must never hold more than a fixed number of bytes: an event larger
than ``limit`` is dropped whole and counted in ``dropped``, never buffered.
Only ``data:`` lines matter to its callers; ``event:``, ``id:``, ``retry:``
and comments are skipped (the formats we read repeat the event type in the
data). Lines end with LF or CRLF; a lone CR is not treated as a line end.
"""

from __future__ import annotations

_NOTHING: list[bytes] = []  # shared empty result: most chunks finish no event


class SseDecoder:
    """Feed bytes, get the ``data`` payloads of the events they complete."""

    __slots__ = ("_data", "_midline", "_parts", "_size", "_skipping", "dropped", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._parts: list[bytes] = []  # pieces of an unfinished line
        self._data: list[bytes] = []  # data lines of the event being read
        self._size = 0  # bytes held in _parts and _data together
        self._skipping = False  # the current event passed the limit: ignore it to its end
        self._midline = False  # ...and the line it stopped in has not ended yet
        self.dropped = 0  # events lost to the limit

    def feed(self, chunk: bytes) -> list[bytes]:
        """The payloads (data lines joined by LF) of every event ``chunk`` ends."""
        if b"\n" not in chunk:
            self._hold(chunk)
            return _NOTHING
        if self._parts:
            self._parts.append(chunk)
            chunk = b"".join(self._parts)
            self._size -= len(chunk) - len(self._parts[-1])
            self._parts = []
        elif not (self._data or self._skipping) and chunk.endswith(b"\n\n") and b"\r" not in chunk:
            return self._whole(chunk)
        lines = chunk.split(b"\n")
        tail = lines.pop()
        if self._midline:  # the first line only ends one that was dropped
            self._midline = False
            del lines[0]
        events = self._lines(lines, _NOTHING)
        self._hold(tail)
        return events

    def _whole(self, chunk: bytes) -> list[bytes]:
        """Fast path for the usual chunk: whole LF-separated events, most of them a
        single ``data:`` line (possibly after an ``event:`` line)."""
        events: list[bytes] = []
        for event in chunk[:-2].split(b"\n\n"):
            at = event.find(b"data:")
            if at == 0 or (at > 0 and event[at - 1] == 10):  # a line starting with data:
                value = event[at + 5 :]
                if b"\n" not in value:  # the last line, and the only data line
                    value = value[1:] if value[:1] == b" " else value
                    if len(value) < self.limit:
                        events.append(value)
                    else:
                        self.dropped += 1
                    continue
            events = self._lines([*event.split(b"\n"), b""], events)
        return events

    def _lines(self, lines: list[bytes], events: list[bytes]) -> list[bytes]:
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                payload = self._dispatch()
                if payload is not None:
                    if events is _NOTHING:
                        events = []
                    events.append(payload)
            elif line.startswith(b"data:") and not self._skipping:
                value = line[6:] if line[5:6] == b" " else line[5:]
                self._size += len(value) + 1
                if self._size > self.limit:
                    self._skip()
                else:
                    self._data.append(value)
        return events

    def _hold(self, part: bytes) -> None:
        if not part or self._midline:
            return
        self._size += len(part)
        if self._size > self.limit:
            self._skip()
            self._midline = True
            return
        self._parts.append(part)

    def _skip(self) -> None:
        if not self._skipping:
            self.dropped += 1
        self._skipping = True
        self._data.clear()
        self._parts.clear()
        self._size = 0

    def _dispatch(self) -> bytes | None:
        """End of an event (a blank line): its payload, or None when it had no data."""
        if self._skipping:
            self._skipping = False
            return None
        if not self._data:
            return None
        data = self._data
        payload = data[0] if len(data) == 1 else b"\n".join(data)
        self._data = []
        self._size = 0
        return payload
