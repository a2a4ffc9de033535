"""Whether the agent's answer is served or legacy answers instead: a table per trigger."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import orjson
import pytest

import proxy.fallback
from proxy.fallback import FallbackPolicy, FallbackReason, check, classify_failure

R = FallbackReason
DEFAULT = FallbackPolicy()
JSON = FallbackPolicy(expect_json=True)
FIELDS = FallbackPolicy(required_fields=("$.data.id", "$.items[0].sku"))
SURE = FallbackPolicy(confidence_path="$.meta.confidence", min_confidence=0.7)


def body(doc: Any) -> bytes:
    return orjson.dumps(doc)


def confident(value: Any) -> bytes:
    return body({"meta": {"confidence": value}})


@pytest.mark.parametrize(
    ("status", "headers", "payload", "policy", "reason", "detail"),
    [
        (200, {}, b"anything", DEFAULT, None, None),
        (500, {}, b"", DEFAULT, R.STATUS, "status 500"),
        (503, {}, b"", DEFAULT, R.STATUS, "status 503"),
        (503, {}, b"", FallbackPolicy(on_5xx=False), None, None),
        (404, {}, b"", DEFAULT, None, None),
        (404, {}, b"", FallbackPolicy(statuses=frozenset({404, 409})), R.STATUS, "status 404 is"),
        (503, {}, b"", FallbackPolicy(on_5xx=False, statuses=frozenset({503})), R.STATUS, "503"),
        (200, {}, None, DEFAULT, R.TOO_LARGE, "larger than the buffer"),
        (500, {}, None, DEFAULT, R.STATUS, "status 500"),  # status checks come first
        (200, {}, b"{", JSON, R.INVALID_JSON, "invalid JSON"),
        (200, {}, b"", JSON, R.INVALID_JSON, "invalid JSON"),
        (200, {}, b'"just a string"', JSON, None, None),
        (200, {}, b"{", DEFAULT, None, None),  # no JSON check configured: not parsed
        (200, {}, b"{", FIELDS, R.INVALID_JSON, "invalid JSON"),
        (200, {}, body({"data": {"id": 1}, "items": [{"sku": "a"}]}), FIELDS, None, None),
        (200, {}, body({"data": {"id": None}, "items": [{"sku": 0}]}), FIELDS, None, None),
        (
            200,
            {},
            body({"data": {"name": "x"}, "items": [{"sku": "a"}]}),
            FIELDS,
            R.MISSING_FIELD,
            "missing $.data.id",
        ),
        (
            200,
            {},
            body({"data": [1], "items": []}),
            FIELDS,
            R.MISSING_FIELD,
            "missing $.data.id, $.items[0].sku",
        ),
        (200, {}, confident(0.41), SURE, R.LOW_CONFIDENCE, "confidence 0.41 below 0.7"),
        (200, {}, confident(0.7), SURE, None, None),
        (200, {}, confident(0.95), SURE, None, None),
        (200, {}, confident(1), SURE, None, None),
        (200, {}, confident(0), SURE, R.LOW_CONFIDENCE, "confidence 0 below 0.7"),
        (200, {}, body({"meta": {}}), SURE, R.LOW_CONFIDENCE, "missing at $.meta.confidence"),
        (200, {}, body([1]), SURE, R.LOW_CONFIDENCE, "missing at $.meta.confidence"),
        (200, {}, confident("0.9"), SURE, R.LOW_CONFIDENCE, "not a number (str)"),
        (200, {}, confident(True), SURE, R.LOW_CONFIDENCE, "not a number (bool)"),
        (200, {}, confident(None), SURE, R.LOW_CONFIDENCE, "not a number (null)"),
        (200, {"Content-Encoding": "gzip"}, b"\x1f\x8b", JSON, R.INVALID_JSON, "gzip-encoded"),
        (200, {"content-encoding": "br"}, b"\x00", SURE, R.INVALID_JSON, "br-encoded"),
        (200, {"Content-Encoding": "identity"}, confident(0.9), SURE, None, None),
        (200, {"Content-Encoding": "gzip"}, b"\x1f\x8b", DEFAULT, None, None),
    ],
)
def test_check_serves_the_agent_unless_a_configured_trigger_fires(
    status: int,
    headers: dict[str, str],
    payload: bytes | None,
    policy: FallbackPolicy,
    reason: FallbackReason | None,
    detail: str | None,
) -> None:
    verdict = check(status, headers, payload, policy)
    if reason is None:
        assert verdict is None
    else:
        assert verdict is not None
        assert verdict[0] is reason
        assert detail is not None and detail in verdict[1]


def test_json_is_parsed_once_and_only_when_a_json_check_is_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[bytes] = []
    real_loads = orjson.loads

    def counting_loads(data: bytes) -> Any:
        calls.append(data)
        return real_loads(data)

    monkeypatch.setattr(orjson, "loads", counting_loads)
    every = FallbackPolicy(
        expect_json=True,
        required_fields=("$.meta",),
        confidence_path="$.meta.confidence",
        min_confidence=0.5,
    )
    assert check(200, {}, confident(0.9), every) is None
    assert check(200, {}, confident(0.9), DEFAULT) is None
    assert len(calls) == 1


def test_check_uses_the_paths_compiled_with_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = FallbackPolicy(
        required_fields=("$.meta",), confidence_path="$.meta.confidence", min_confidence=0.5
    )

    def no_parsing(*_: object, **__: object) -> None:
        raise AssertionError("a path was parsed during check()")

    monkeypatch.setattr("comparators.paths.compile_path", no_parsing)
    monkeypatch.setattr(proxy.fallback, "compile_path", no_parsing)
    assert check(200, {}, confident(0.9), policy) is None
    assert check(200, {}, confident(0.1), policy) is not None


def test_policies_with_the_same_settings_are_equal_and_hashable() -> None:
    a = FallbackPolicy(required_fields=("$.a",), confidence_path="$.c", min_confidence=0.5)
    b = dataclasses.replace(a, min_confidence=0.5)
    assert a == b and hash(a) == hash(b)
    assert check(200, {}, body({"c": 0.6}), b) is not None  # replace() recompiled: "$.a" absent


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"required_fields": ("data.id",)}, "starts with '$'"),
        ({"required_fields": ("$.items[*].id",)}, "wildcards"),
        ({"confidence_path": "$..confidence", "min_confidence": 0.5}, "wildcards"),
        ({"confidence_path": "$.c"}, "set together"),
        ({"min_confidence": 0.5}, "set together"),
        ({"statuses": frozenset({42})}, "HTTP statuses"),
    ],
)
def test_a_bad_policy_fails_when_it_is_built_with_the_reason(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        FallbackPolicy(**kwargs)


@pytest.mark.parametrize(
    ("error_kind", "reason"),
    [
        ("timeout", R.TIMEOUT),
        ("connect", R.ERROR),
        ("disconnect", R.ERROR),
        ("invalid_response", R.ERROR),
        ("anything else", R.ERROR),
    ],
)
def test_transport_failures_map_to_timeout_or_error(
    error_kind: str, reason: FallbackReason
) -> None:
    assert classify_failure(error_kind) is reason


def test_reasons_are_stable_metric_label_values() -> None:
    assert {r.value for r in FallbackReason} == {
        "error",
        "timeout",
        "status",
        "invalid_json",
        "missing_field",
        "low_confidence",
        "too_large",
        "breaker_open",
    }
