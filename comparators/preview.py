"""Short, printable previews of bodies, so a Difference never carries a whole payload."""

from __future__ import annotations

PREVIEW_CHARS = 120


def preview(data: bytes | str, limit: int = PREVIEW_CHARS) -> str:
    """Decode (UTF-8, invalid bytes replaced) and cut to ``limit`` chars, marking the cut."""
    if isinstance(data, bytes):
        # Decode only what can show up: a UTF-8 character is at most 4 bytes.
        data = data[: limit * 4 + 4].decode("utf-8", errors="replace")
    return data if len(data) <= limit else data[: limit - 1] + "…"
