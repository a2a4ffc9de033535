"""The Redactor: what is masked, and what evidence survives it."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest
import structlog

from proxy import logs
from proxy.errors import ConfigError
from proxy.logs import bounded, truncate
from proxy.redaction import MASK, Redactor, luhn
from proxy.settings import LoggingSettings, settings_from

R = Redactor(fields=["pin"], patterns=[r"ACME-\d{4}"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/api?api_key=abc123&page=2", f"/api?api_key={MASK}&page=2"),
        ("/api?Access_Token=abc;x=1", f"/api?Access_Token={MASK};x=1"),
        ('{"password": "hunter2", "a": 1}', f'{{"password": "{MASK}", "a": 1}}'),
        ('{"token":"cut short…(+40)', f'{{"token":"{MASK}"'),  # JSON truncated mid-value
        ("password='x y' next", f"password='{MASK}' next"),
        ("Authorization: Bearer abc.def-ghi_jkl", f"Authorization: {MASK}"),
        ("basic dXNlcjpwYXNzd29yZA==", MASK),
        ("key sk-proj-abcdefghijklmnop1234", f"key {MASK}"),
        ("aws AKIAABCDEFGHIJKLMNOP", f"aws {MASK}"),
        ("jwt eyJhbGciOiJI.eyJzdWIiOiIx.SflKxwRJSMeKKF2QT4", f"jwt {MASK}"),
        ("mail joe.doe+x@mail.example.co.uk now", f"mail {MASK} now"),
        ("http://user:pa55@host:80/x", f"http://{MASK}@host:80/x"),
        ("card 4111 1111 1111 1111 ok", f"card {MASK} ok"),
        ("card 5500-0000-0000-0004", f"card {MASK}"),
        ("order 1234567890123456", "order 1234567890123456"),  # fails Luhn: an id, kept
        ("version 1.2.3 and 3.14159265358979", "version 1.2.3 and 3.14159265358979"),
        ("pin=1234 and ACME-0042", f"pin={MASK} and {MASK}"),  # configured field and pattern
        ("token_usage=5 tokens: 4", "token_usage=5 tokens: 4"),  # names, not prefixes
        ("nothing to see here", "nothing to see here"),
        ("Authorization: Token abc def", f"Authorization: {MASK}"),  # the whole header value
        ("cookie: sid=abc; csrftoken=xyz\nnext", f"cookie: {MASK}\nnext"),
        ("newPassword=x&DB_PASSWORD=y", f"newPassword={MASK}&DB_PASSWORD={MASK}"),
        ('{"accessToken": "a", "max_tokens": 5}', f'{{"accessToken": "{MASK}", "max_tokens": 5}}'),
        ("amex 3782 822463 10005", f"amex {MASK}"),
        # Percent-encoded in a query string: decoded to be found (the encoding goes with it)
        ("/f?auth=Bearer%20t0ken.abc123&who=jo%40x.io&n=1", f"/f?auth={MASK}&who={MASK}&n=1"),
        ("/f?q=a%20b&page=2", "/f?q=a%20b&page=2"),  # nothing secret: the encoding stays
        # Evidence that only looks like a secret survives:
        ("the basic reasoning is sound", "the basic reasoning is sound"),
        (
            "ts 1732233600000 from 2024-12-22 2025-12-01",
            "ts 1732233600000 from 2024-12-22 2025-12-01",
        ),
        (
            "id 123e4567-e89b-12d3-a456-426614174000 v1.2.3",
            "id 123e4567-e89b-12d3-a456-426614174000 v1.2.3",
        ),
    ],
)
def test_text_masks_secret_shapes_and_keeps_the_rest(text: str, expected: str) -> None:
    assert R.text(text) == expected


def test_a_mapping_masks_sensitive_keys_at_any_depth_and_keeps_others() -> None:
    event = {
        "event": "x",
        "headers": {"Authorization": "a", "Set-Cookie": ["b", "c"], "Accept": "json"},
        "nested": [{"client_secret": "d", "id": 7}],
        "token": None,  # nothing to mask: stays None, so absence is still visible
    }
    assert R.mapping(event) == {
        "event": "x",
        "headers": {"Authorization": MASK, "Set-Cookie": MASK, "Accept": "json"},
        "nested": [{"client_secret": MASK, "id": 7}],
        "token": None,
    }


@pytest.mark.parametrize(
    ("path", "masked"),
    [
        ("$.user.password", True),
        ("$['user']['api_key']", True),
        ("headers.set-cookie", True),
        ("$.items[3].token", True),
        ("$.user.name", False),
        ("$.tokens_used", False),
    ],
)
def test_a_difference_about_a_secret_keeps_its_path_and_kind_only(path: str, masked: bool) -> None:
    difference = {"path": path, "kind": "changed", "legacy": "s3cret-1", "agent": "s3cret-2"}
    out = R.mapping(difference)
    assert out["path"] == path and out["kind"] == "changed"
    assert (out["legacy"], out["agent"]) == ((MASK, MASK) if masked else ("s3cret-1", "s3cret-2"))


@pytest.mark.parametrize(
    ("key", "masked"),
    [
        ("Authorization", True),
        ("accessToken", True),
        ("x-csrf-token", True),
        ("clientSecret", True),
        ("user_api_key", True),
        ("session_id", True),
        ("max_tokens", False),
        ("token_count", False),
        ("primary_key", False),
        ("name", False),
    ],
)
def test_keys_are_secret_by_name_by_last_word_or_by_last_two_words(key: str, masked: bool) -> None:
    assert R.mapping({key: "v"}) == {key: MASK if masked else "v"}


@pytest.mark.parametrize(
    "adversarial",
    ["a" * 400_000, "a@" * 200_000, "a." * 200_000, " " * 400_000, "4111 " * 80_000,
     "token=" * 70_000, '"password": "' + "a" * 400_000, "Bearer " + "a" * 400_000,
     "authorization:" * 30_000],
)  # fmt: skip
def test_long_adversarial_text_is_redacted_in_linear_time(adversarial: str) -> None:
    """No pattern backtracks: a quadratic one would take minutes here (the
    per-test timeout), where linear ones take well under a second."""
    assert len(R.text(adversarial)) <= len(adversarial)


def test_a_value_is_redacted_before_it_is_truncated() -> None:
    """A cut through a secret would leave a piece no pattern recognizes."""
    text = "x" * 190 + " 4111 1111 1111 1111 and joe.doe@example.com"
    out = bounded(text, 200, R)
    assert out.startswith("x" * 190 + " [REDAC") and "1111" not in out
    assert " 4111 1111…" in truncate(text, 200)  # what a cut alone would have shown
    assert bounded({"password": "p" * 500}, 200, R) == {"password": MASK}


def test_a_request_path_naming_a_secret_does_not_mask_the_event() -> None:
    event = {"event": "mismatch", "path": "/api/token/refresh", "score": 0.5}
    assert R.mapping(event) == event


def test_bytes_and_sets_are_scanned_too() -> None:
    assert R.value(b"password=x") == f"password={MASK}"
    assert R.value({"a@b.io"}) == [MASK]


@pytest.mark.parametrize("digits", ["4111111111111111", "5500000000000004", "378282246310005"])
def test_luhn_accepts_test_card_numbers(digits: str) -> None:
    assert luhn(digits)
    assert not luhn(digits[:-1] + str((int(digits[-1]) + 1) % 10))


@pytest.mark.parametrize(
    ("patterns", "problem"),
    [
        (["(unclosed"], "redaction.patterns: Value error, pattern 0 ('(unclosed') is not a valid"),
        (
            ["ok", "x*"],
            "redaction.patterns: Value error, pattern 1 ('x*') matches the empty string",
        ),
    ],
)
def test_a_bad_pattern_is_a_config_error_naming_it(patterns: list[str], problem: str) -> None:
    data = {"backends": {"legacy": {"url": "http://h:1"}}, "redaction": {"patterns": patterns}}
    with pytest.raises(ConfigError) as caught:
        settings_from(data)
    assert any(
        line.startswith(problem.replace("Value error, ", "")) for line in caught.value.problems
    )


def test_configured_logging_redacts_structlog_and_stdlib_records_alike() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logs.configure(LoggingSettings(format="json"), stream, Redactor())
    try:
        structlog.get_logger("t").info("event", authorization="Bearer abcdefgh12345678")
        logging.getLogger("aiohttp.server").error("bad request from a@b.io?token=zzz")
        try:
            raise ValueError("password=hunter2")
        except ValueError:
            logging.getLogger("asyncio").exception("task failed")
    finally:
        structlog.reset_defaults()
        root.handlers[:], root.level = handlers, level
        logging.captureWarnings(False)
    lines: list[dict[str, Any]] = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["event"] for line in lines] == [
        "event",
        f"bad request from {MASK}?token={MASK}",
        "task failed",
    ]
    assert lines[0]["authorization"] == MASK
    assert lines[1]["logger"] == "aiohttp.server"
    assert "hunter2" not in stream.getvalue() and "ValueError" in lines[2]["exception"]


def test_a_record_a_filter_lowers_below_the_configured_level_is_not_written() -> None:
    """How aiohttp's malformed-request errors become info lines: they must
    then obey ``logging.level`` like any other info line."""
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logger = logging.getLogger("test.lowered")

    def lower(record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.INFO, "INFO"
        return True

    logger.addFilter(lower)
    logs.configure(LoggingSettings(format="json", level="warning"), stream, Redactor())
    try:
        logger.error("lowered")
        logging.getLogger("test.other").error("kept")
    finally:
        logger.removeFilter(lower)
        structlog.reset_defaults()
        root.handlers[:], root.level = handlers, level
        logging.captureWarnings(False)
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["kept"]
