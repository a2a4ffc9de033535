"""Secrets and personal data out of everything the proxy writes down.

One :class:`Redactor`, built from config at the edge, is the last step before
a log event is rendered (structlog's and the standard library's alike), so no
event — a mismatch with its differing values, a failure detail, an aiohttp
error — can carry a secret out, whoever wrote it. Recorded samples go through
the same object.

Three rules, each applied wherever a value sits in an event:

* a mapping key, or a difference ``path``, that names a sensitive header or
  field (``authorization``, ``$.user.password``) masks the whole value;
* text is scanned for ``name=value`` / ``"name": value`` pairs with a
  sensitive name (query strings, form bodies, JSON cut to a string);
* text is scanned for patterns: e-mail addresses, card numbers (Luhn-checked,
  so order ids survive), bearer/basic credentials, well-known API key shapes,
  URL credentials — plus the configured ones.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any
from urllib.parse import unquote_plus

from comparators.paths import generalize

MASK = "[REDACTED]"

HEADERS = (
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
    "x-access-token",
    "x-amz-security-token",
    "x-goog-api-key",
)
FIELDS = (
    "password",
    "passwd",
    "secret",
    "client_secret",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "api_key",
    "apikey",
    "private_key",
    "session",
    "session_id",
    "card_number",
    "cvv",
    "ssn",
)
# A key ending in one of these words is a secret's too: newPassword,
# DB_PASSWORD, x-csrf-token, clientSecret (but not max_tokens, token_count).
SUFFIXES = ("password", "passwd", "secret", "token")
# Every pattern runs in linear time: runs are bounded and anchored so that a
# long adversarial string (a malformed request line is logged) costs little.
PATTERNS = {
    "url_credentials": r"(?<=://)[^/\s:@]{1,256}:[^/\s@]{1,256}(?=@)",
    # a credential has a digit or '=' somewhere: "basic reasoning" is prose
    "bearer": r"\b(?i:bearer|basic)\s+(?=[A-Za-z._~+/-]{0,512}[0-9=])[A-Za-z0-9._~+/=-]{6,}",
    "api_key": r"\b(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}|\bAKIA[0-9A-Z]{16}\b"
    r"|\bgh[pousr]_[A-Za-z0-9]{30,}|\bxox[abprs]-[A-Za-z0-9-]{10,}"
    r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
    "email": r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@"
    r"(?:[A-Za-z0-9-]{1,63}\.){1,8}[A-Za-z]{2,24}\b",
}
# Card numbers: 13 to 19 digits starting 2-6 (so epoch-millisecond timestamps
# and most ids do not qualify), plain or in groups of four (Amex 4-6-5) with
# one separator; masked only when the Luhn check passes.
_CARD = re.compile(
    r"(?<![\d.])(?:[2-6]\d{12,18}|[2-6]\d{3}([ -])\d{4}\1\d{4}\1\d{1,7}"
    r"|3[47]\d{2}([ -])\d{6}\2\d{5})(?![\d.])"
)
_WORDS = re.compile(r"[a-z0-9]+")
_KEYS = re.compile(r"[A-Za-z0-9_-]+")  # the keys along a difference path
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
# A difference names its field in ``path`` and carries both sides' values.
_VALUE_KEYS = ("legacy", "agent", "expected", "actual")


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    text = match.group(0)
    return MASK if luhn(re.sub(r"[ -]", "", text)) else text


class Redactor:
    """Masks sensitive values in log events and records; see the module doc."""

    def __init__(
        self,
        headers: Iterable[str] = (),
        fields: Iterable[str] = (),
        patterns: Iterable[str] = (),
    ) -> None:
        self.names = frozenset(n.lower() for n in (*HEADERS, *FIELDS, *headers, *fields))
        alternatives = "|".join(re.escape(n) for n in sorted(self.names, key=len, reverse=True))
        suffixes = "|".join(SUFFIXES)
        name = rf"(?:{alternatives}|[\w-]{{0,40}}?(?:{suffixes}))"
        header_names = "|".join(
            re.escape(n.lower()) for n in sorted({*HEADERS, *headers}, key=len, reverse=True)
        )
        # "Authorization: Token abc", "Cookie: a=1; b=2": the rest of the line
        self._header_lines = re.compile(
            rf"""(?i)((?<!["'\w-])(?:{header_names})\s*:[ \t]*)(?!\[REDACTED\])[^\r\n]+"""
        )
        # name=value (query, form, console) and "name": value (JSON cut to text)
        self._pairs = re.compile(
            rf"""(?i)(["']?(?<![\w-]){name}["']?\s*[:=]\s*)"""
            r"""(\[REDACTED\]|"(?:[^"\\]|\\.)*"?|'[^']*'?|[^\s&;,}\]"']+)"""
        )
        builtin = re.compile("|".join(f"(?:{p})" for p in PATTERNS.values()))
        self._patterns = [builtin, *(re.compile(p) for p in patterns)]

    def sensitive_key(self, key: str) -> bool:
        """A header or field name of a secret: listed, ending in a secret's
        word (``newPassword``, ``x-csrf-token``) or in a listed two-word name
        (``user_api_key``)."""
        lowered = key.lower()
        if lowered in self.names:
            return True
        words = _WORDS.findall(_CAMEL.sub(r"\1_\2", key).lower())
        return bool(words) and (words[-1] in SUFFIXES or "_".join(words[-2:]) in self.names)

    def sensitive(self, path: str) -> bool:
        """Does any key along this difference path (``$.user.newPassword``,
        ``headers.set-cookie``) name a secret?"""
        return any(self.sensitive_key(k) for k in _KEYS.findall(path))

    def text(self, value: str) -> str:
        masked = self._plain_text(value)
        if "%" in masked or "+" in masked:  # a query string: ?auth=Bearer%20x&who=a%40b.c
            plain = unquote_plus(masked)
            if plain != masked and (decoded := self._plain_text(plain)) != plain:
                return decoded  # the encoding is lost, the secret with it
        return masked

    def _plain_text(self, value: str) -> str:
        for pattern in self._patterns:  # first, so "Authorization: Bearer x" loses all of it
            value = pattern.sub(MASK, value)
        value = self._header_lines.sub(rf"\1{MASK}", value)
        value = self._pairs.sub(_masked_pair, value)
        return _CARD.sub(_card, value)

    def value(self, value: Any) -> Any:
        """The same value with every secret in it masked (containers are copied)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, bytes | bytearray):
            return self.text(bytes(value).decode("utf-8", "replace"))
        if isinstance(value, Mapping):
            return self.mapping(value)
        if isinstance(value, list | tuple | set | frozenset):
            return [self.value(v) for v in value]
        return value

    def mapping(self, data: Mapping[Any, Any]) -> dict[Any, Any]:
        about = data.get("path")
        if isinstance(about, str) and any(k in data for k in _VALUE_KEYS) and self.sensitive(about):
            # A difference about a secret: keep where and what kind, not the values.
            return {k: MASK if k in _VALUE_KEYS else v for k, v in data.items()}
        return {
            k: MASK
            if isinstance(k, str) and v is not None and self.sensitive_key(k)
            else self.value(v)
            for k, v in data.items()
        }

    def __call__(
        self, _logger: Any, _method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        """A structlog processor: the event, redacted."""
        return self.mapping(event)


def _masked_pair(match: re.Match[str]) -> str:
    value = match.group(2)
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{match.group(1)}{quote}{MASK}{quote}"


_DEFAULT = Redactor()


@functools.lru_cache(maxsize=4096)
def path_label(path: str) -> str:
    """A field's path as a metric label: indexes generalized, and keys that
    are data (an e-mail used as a key) masked, since /metrics is open."""
    return _DEFAULT.text(generalize(path))
