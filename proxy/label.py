"""A human verdict on one recorded case: how a golden set gets curated.

``shadow-proxy label FILE ID --verdict legacy|agent|exclude`` rewrites one
line of a JSONL file. Every other line is kept byte for byte (a curated file
lives in git, and a diff should show the one case that changed), and the
file is replaced atomically: a crash leaves the old file, never half of one.
A file the recorder is still appending to must not be labelled: appends that
land during the rewrite are lost with the old file.
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import replace
from pathlib import Path

import orjson

from proxy import atomicfile
from proxy.golden import Answer, Body, Case, CaseError, Label, LabelVerdict, case_time


class LabelError(Exception):
    """Something the user must fix (unknown id, unreadable file); the message says what."""


def body_from_file(path: Path) -> Body:
    """A body file as a recorded body: JSON when it parses, else UTF-8 text."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise LabelError(f"cannot read {path}: {exc.strerror or exc}") from None
    with contextlib.suppress(orjson.JSONDecodeError):
        return Body("json", orjson.loads(raw))
    try:
        return Body("text", raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise LabelError(f"{path} is neither JSON nor UTF-8 text") from None


def _expected(case: Case, verdict: LabelVerdict, body: Body) -> Answer:
    """The approved body with the status and content type of the answer the
    verdict points at (the body file says nothing about either)."""
    answer = case.agent if verdict is LabelVerdict.AGENT else case.legacy
    headers = {k: v for k, v in answer.headers.items() if k == "content-type"}
    if body.kind == "json":
        headers["content-type"] = "application/json"
    return Answer(answer.status or 200, headers, body)


def _labelled(line: bytes, number: int, case_id: str, label: Label,
              expected_body: Body | None) -> bytes | None:  # fmt: skip
    """The line with the label set, or None when it is not the case asked for."""
    if case_id.encode() not in line:  # cheap: most lines are not the one
        return None
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("id") != case_id:
        return None
    try:
        case = Case.from_json(data)
    except CaseError as exc:
        raise LabelError(f"line {number}: case {case_id} is not valid: {exc.problem}") from None
    expected = case.expected
    if expected_body is not None:
        expected = _expected(case, label.verdict, expected_body)
    new = replace(case, label=label, expected=expected).to_line()
    return new[:-1] + b"\r\n" if line.endswith(b"\r\n") else new


def label_case(
    path: Path,
    case_id: str,
    verdict: str,
    *,
    note: str = "",
    expected_body: Body | None = None,
    now: float | None = None,
) -> int:
    """Label the case ``case_id`` in ``path``; returns how many lines carried it."""
    try:
        chosen = LabelVerdict(verdict)
    except ValueError:
        known = ", ".join(v.value for v in LabelVerdict)
        raise LabelError(f"verdict must be one of {known}, not {verdict!r}") from None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LabelError(f"cannot read {path}: {exc.strerror or exc}") from None
    label = Label(chosen, note, case_time(time.time() if now is None else now))
    out: list[bytes] = []
    found = 0
    for number, line in enumerate(io.BytesIO(data), 1):  # splits on b"\n" only, keeping it
        new = _labelled(line, number, case_id, label, expected_body)
        found += new is not None
        out.append(line if new is None else new)
    if not found:
        raise LabelError(f"no case with id {case_id!r} in {path}")
    atomicfile.replace(path, b"".join(out), keep_mode=True)
    return found
