"""A recorded body, kept as what it *means* so that it can be redacted:
``{"json": value}``, ``{"text": str}``, ``{"omitted": reason}`` (binary, too
large, undecodable, not captured) or ``null`` (no body). gzip/deflate bodies
are stored inflated, so the recorded headers drop ``content-encoding`` and
``content-length``: they described the wire bytes."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from proxy.casejson import CaseError, json_str

DEFAULT_MAX_BODY = 256 * 1024
NOT_CAPTURED = "larger than the capture limit"
# Described the bytes on the wire, not the decoded body we keep.
_WIRE_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_TEXT_TYPES = ("text/", "json", "xml", "javascript", "x-www-form-urlencoded", "yaml", "csv")


@dataclass(frozen=True, slots=True)
class Body:
    """A body as meaning: ``kind`` json (``value`` parsed), text (a str) or
    omitted (``value`` says why). ``None`` in its place means no body."""

    kind: Literal["json", "text", "omitted"]
    value: Any

    def content(self) -> bytes | None:
        """Bytes to send or compare; ``None`` for an omitted body (nothing to use)."""
        if self.kind == "json":
            return orjson.dumps(self.value)
        return self.value.encode() if self.kind == "text" else None

    def to_json(self) -> dict[str, Any]:
        return {self.kind: self.value}

    @classmethod
    def from_json(cls, data: Any, where: str) -> Body | None:
        if data is None:
            return None
        if not isinstance(data, dict) or len(data) != 1 or next(iter(data)) not in _BODY_KINDS:
            raise CaseError(
                f'{where}: expected null or one of {{"json": …}}, {{"text": …}}, {{"omitted": …}}'
            )
        kind, value = next(iter(data.items()))
        if kind != "json":
            value = json_str(value, f"{where}.{kind}")
        return cls(kind, value)


_BODY_KINDS = ("json", "text", "omitted")


def body_bytes(body: Body | None) -> bytes | None:
    """The bytes to send or compare: ``b""`` for no body, ``None`` when it was omitted."""
    return b"" if body is None else body.content()


def inflate(data: bytes, encoding: str, limit: int) -> bytes | str:
    """gzip/deflate inflated up to ``limit`` bytes, or why not, worded to follow
    "body " (bombs stop at the limit; a cut stream is not taken for a whole one)."""
    wbits = _WBITS.get(encoding)
    if wbits is None:
        return f"is {encoding}-encoded"
    inflater = zlib.decompressobj(wbits)
    try:
        body = inflater.decompress(data, limit + 1)
    except zlib.error:
        return f"is not valid {encoding}"
    if len(body) > limit or inflater.unconsumed_tail:
        return f"inflates past {limit} bytes"
    if not inflater.eof:
        return f"is not valid {encoding} (truncated)"
    return body


def encode_body(
    data: bytes | None, headers: Mapping[str, str], limit: int = DEFAULT_MAX_BODY
) -> Body | None:
    """What a captured body is worth keeping: JSON when it parses as its
    content type says, UTF-8 text, else omitted with the reason. ``headers``
    are lower-case (see :func:`plain_headers`)."""
    if data is None:
        return Body("omitted", NOT_CAPTURED)
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity") and data:
        inflated = inflate(data, encoding, limit)
        if isinstance(inflated, str):
            return Body("omitted", f"body {inflated}")
        data = inflated
    if not data:
        return None
    if len(data) > limit:
        return Body("omitted", f"{len(data)} bytes, above the recording limit of {limit}")
    ctype = headers.get("content-type", "").split(";")[0].strip().lower()
    if "json" in ctype or (not ctype and data.lstrip()[:1] in (b"{", b"[")):
        try:
            return Body("json", orjson.loads(data))
        except orjson.JSONDecodeError:
            pass  # recorded as text: a broken JSON answer is evidence too
    if not ctype or any(t in ctype for t in _TEXT_TYPES):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            if "\x00" not in text:
                return Body("text", text)
    shown = ctype or "no content type"
    return Body("omitted", f"binary ({shown}, {len(data)} bytes): it cannot be redacted")


def plain_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Lower-case names; a repeated header (a multidict) joined with ', '."""
    plain: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        plain[key] = f"{plain[key]}, {value}" if key in plain else value
    return plain


def recorded_parts(
    headers: Mapping[str, str], data: bytes | None, limit: int
) -> tuple[dict[str, str], Body | None]:
    plain = plain_headers(headers)
    body = encode_body(data, plain, limit)
    kept = {k: v for k, v in plain.items() if k not in _WIRE_HEADERS}
    if body is None or body.kind != "omitted":  # stored decoded: the encoding no longer applies
        kept.pop("content-encoding", None)
    return kept, body
