"""Fuzzing the config loader: any YAML file, any config-shaped document and any
SHADOW_PROXY_* override gives a Settings or a ConfigError whose problems each
name a field and a reason on one line, never another exception or a traceback."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proxy.app import build_metrics
from proxy.errors import ConfigError
from proxy.routing import Routing
from proxy.settings import Settings, load_settings, settings_from

# No example database (tests must not write into the source tree); no deadline on a shared box.
FUZZ = settings(
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
SCHEMA = Settings.model_json_schema()
MINIMAL: dict[str, Any] = {"backends": {"legacy": {"url": "http://127.0.0.1:8001"}}}
FILE_PROBLEMS = ("cannot read file: ", "not valid YAML: ", "the top level must be a mapping")
CLI = str(Path(sys.executable).parent / "shadow-proxy")

# Values a person (or a bad template) might put where a string of this name goes.
SPECIAL: dict[str, list[str]] = {
    "url": ["http://127.0.0.1:8001", "https://agent.internal/base/", "localhost:80", "http://",
            "ftp://h", "http://[::1", "http://h:99999", "http://h/?q=1", "http://h/#f", "http://\x00"],
    "regex": [r"/api/v\d+/.*", "(", "[a-", "a{99999999999}", "(?P<x>a)(?P<x>b)", "\\",
              "(" * 1200 + ")" * 1200, "*"],
    "name": ["api", "api", "unmatched", "", "x" * 65, "bad name", "-x", "json", "text", "nope"],
    "exact": ["/", "/api/", "", "api", "/a b"],
    "path": ["$", "$.a", "$.a[0]", "$..a", "$[*]", "$[", "a", "$.a[-1]", "$['x"],
    "host": ["0.0.0.0", "::1", "", "not a host"],
    "header": ["X-User", "", "Bad Header", "x\n"],
}  # fmt: skip
SPECIAL |= {"prefix": SPECIAL["exact"], "patterns": SPECIAL["regex"], "ignore": SPECIAL["path"],
            "unordered_paths": SPECIAL["path"], "required_fields": SPECIAL["path"],
            "names": SPECIAL["header"], "drop_headers": SPECIAL["header"],
            "force_header": SPECIAL["header"], "cookie": SPECIAL["header"]}  # fmt: skip

garbage = (
    st.none()
    | st.booleans()
    | st.sampled_from([-1, 0, 2**63, 10**30, -(10**30), float("nan"), float("inf"), -0.5])
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.lists(st.integers(), max_size=2)
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
)
odd_keys = st.sampled_from(["nope", "_env_file", "_cli_parse_args", "Listen", "routes ", "a\nb"])
odd_keys: st.SearchStrategy[Any] = odd_keys | st.text(max_size=5) | st.integers() | st.none()
rare = st.sampled_from([False] * 15 + [True])  # shrinks towards False: the well-typed choice


def _strings(prop: str, schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    choices = st.text(max_size=10)
    if "pattern" in schema:  # durations and sizes: spelled right, sometimes absurdly large
        huge = st.sampled_from(["9" * 400, "9" * 400 + "GiB", "9" * 20 + "h", "1e3s", "-1s"])
        choices |= st.from_regex(schema["pattern"], fullmatch=True) | huge
    if prop in SPECIAL:
        choices = st.sampled_from(SPECIAL[prop]) | choices
    return choices


def _numbers(schema: dict[str, Any], integer: bool) -> st.SearchStrategy[Any]:
    low, high = schema.get("minimum"), schema.get("maximum")
    if integer:
        typed: st.SearchStrategy[Any] = st.integers(
            None if low is None else int(low) - 1, None if high is None else int(high) + 1
        )
    else:
        typed = st.floats(low, high) | st.floats()
    return typed | st.sampled_from([-1, 0, 10**30])


def from_schema(schema: dict[str, Any], prop: str = "") -> st.SearchStrategy[Any]:
    """Documents shaped like ``schema`` (pydantic's JSON schema), wrong in places."""
    if "$ref" in schema:
        return from_schema(SCHEMA["$defs"][schema["$ref"].rsplit("/", 1)[1]], prop)
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "anyOf" in schema or "oneOf" in schema:
        return st.one_of([from_schema(s, prop) for s in schema.get("anyOf", schema.get("oneOf"))])
    kind = schema.get("type")
    if kind == "object":
        return _objects(schema)
    if kind == "array":
        return st.lists(_value(schema.get("items", {}), prop), max_size=3)
    if kind == "string":
        return _strings(prop, schema)
    if kind in ("integer", "number"):
        return _numbers(schema, kind == "integer")
    if kind == "boolean":
        return st.booleans()
    return st.none()


def _value(schema: dict[str, Any], prop: str) -> st.SearchStrategy[Any]:
    """Mostly the right type; now and then anything at all."""
    typed = from_schema(schema, prop)

    @st.composite
    def value(draw: st.DrawFn) -> Any:
        return draw(garbage if draw(rare) else typed)

    return value()


def _objects(schema: dict[str, Any]) -> st.SearchStrategy[dict[Any, Any]]:
    props: dict[str, dict[str, Any]] = schema.get("properties", {})
    required = set(schema.get("required", ()))
    if not props:  # a free mapping such as shadow.add_headers
        return st.dictionaries(_strings("header", {}), _value({"type": "string"}, ""), max_size=2)

    values = {name: _value(sub, name) for name, sub in props.items()}  # built once

    @st.composite
    def build(draw: st.DrawFn) -> dict[Any, Any]:
        doc: dict[Any, Any] = {}
        for name, value in values.items():
            present = not draw(rare) if name in required else draw(st.booleans())
            if present:
                doc[name] = draw(value)
        if draw(rare):
            doc[draw(odd_keys)] = draw(garbage)
        return doc

    return build()


configs = from_schema(SCHEMA)


def checked(load: Callable[[], Settings], data: Any = None) -> Settings | ConfigError:
    """The loader's answer, after checking that a refusal is one clean line per problem,
    each naming where (a setting, or a key the document has) and why."""
    try:
        return load()
    except ConfigError as exc:
        assert exc.problems
        heads = heads_of(data)
        for problem in exc.problems:
            assert "\n" not in problem and "Traceback" not in problem, problem
            if problem.startswith(FILE_PROBLEMS):
                continue
            where, _, why = problem.partition(": ")
            assert where and why.strip(), problem
            assert heads is None or problem.startswith(heads), (problem, heads)
        return exc


def quoted(key: Any) -> str:
    """A key as a problem names it: quoted when empty or unprintable."""
    text = str(key)
    return text if text.isprintable() and text else repr(text)


def heads_of(data: Any) -> tuple[str, ...] | None:
    """The dotted paths a problem may start with; None when the document is unknown."""
    if not isinstance(data, dict):
        return None
    names = {*Settings.model_fields, *map(quoted, data), "(environment)"}
    return tuple(f"{name}{end}" for name in names for end in ".:")


def has_nan(doc: Any) -> bool:
    values = doc.values() if isinstance(doc, dict) else doc if isinstance(doc, list) else None
    return doc != doc if values is None else any(map(has_nan, values))


def normalized(loaded: Settings) -> dict[str, Any]:
    """What check-config prints, but with every field: it drops nulls, and a null
    max_latency_ratio (gate off) would load back as the default 3.0."""
    return loaded.model_dump(mode="json", exclude={"admin": {"token"}})


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-config")


def route(**fields: Any) -> dict[str, Any]:
    return {**MINIMAL, "routes": [{"name": "r", "match": {"prefix": "/"}, **fields}]}


@settings(FUZZ, max_examples=200)
@given(configs)
# What this found, kept as regressions (each crashed, or was accepted and broke later):
@example({**MINIMAL, 1: 2})  # TypeError: keywords must be strings
@example({**MINIMAL, "_env_file": "/etc/passwd", "_cli_parse_args": True})  # obeyed
@example({**MINIMAL, "Listen": {"port": 1}, "BACKENDS": {}})  # accepted; BACKENDS dropped
@example(route(match={"regex": "a{99999999999}"}))  # OverflowError
@example(route(match={"regex": "(" * 1200 + ")" * 1200}))  # RecursionError
@example({**MINIMAL, "max_body_size": "9" * 400})  # OverflowError
@example({**MINIMAL, "shadow": {"timeout": float("nan")}})  # accepted: every shadow times out
@example(route(fallback={"confidence": {"path": "$.c", "min": float("nan")}}))  # accepted, too
@example({**MINIMAL, "metrics": {"agreement_window": 2**63}})  # accepted; startup crashed
@example(route(rollout={"window": 1e19}))  # accepted; startup crashed
@example({**MINIMAL, "listen": {"a\nb\x1b[31m": 1}})  # a problem over two lines
def test_config_shaped_documents_give_settings_or_field_errors(workdir: Path, data: Any) -> None:
    """A config-shaped YAML file with wrong types, unknown keys, odd values: Settings or
    a ConfigError naming the field of each problem, unknown top-level keys included.
    A Settings has no NaN, builds what startup builds, and its normalized form loads
    back to the same settings."""
    path = workdir / "shaped.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    loaded = checked(lambda: load_settings(path), data)
    unknown = [quoted(key) for key in data if key not in Settings.model_fields]
    if unknown:
        assert isinstance(loaded, ConfigError), unknown
        for key in unknown:
            assert f"{key}: Extra inputs are not permitted" in loaded.problems
    if isinstance(loaded, Settings):
        Routing(loaded)  # what startup builds from it: route table, comparators, runtimes...
        build_metrics(loaded)  # ...and per-route metrics, without an OverflowError
        assert not has_nan(normalized(loaded)), "a NaN was accepted"
        again = settings_from(normalized(loaded))  # the normalized form is a valid config...
        assert normalized(again) == normalized(loaded)  # ...for the very same settings


yaml_tokens = st.sampled_from(
    ["backends:", " legacy:", "  url: http://l", "routes:", "- name: a", "  match: {prefix: /}",
     "\n", "  ", "- ", "{", "}", "[", "]", ": ", ", ", "&a ", "*a", "!!binary ",
     "!!python/name:os.system",
     "'", '"', "#", "---", "...", "? ", "9" * 5000, "-1", ".nan", "~", "%YAML 1.1", "\t", "\ufeff",
     "\x00", "\\u", "<<: *a", "!!set {a}", "2001-01-01", "1:", "null:", "{" * 300]
)  # fmt: skip
yaml_texts = st.lists(yaml_tokens, max_size=25).map("".join) | st.text(max_size=60)


@settings(FUZZ, max_examples=200)
@given(yaml_texts)
def test_any_text_gives_settings_or_a_config_error(workdir: Path, text: str) -> None:
    """Arbitrary YAML-ish text (deep nesting, tags, aliases, NULs, huge ints): never a crash."""
    path = workdir / "text.yaml"
    path.write_text(text, encoding="utf-8")
    checked(lambda: load_settings(path))


@settings(FUZZ, max_examples=100)
@given(st.binary(max_size=80))
def test_any_bytes_give_settings_or_a_config_error(workdir: Path, data: bytes) -> None:
    """A file that is not UTF-8, or not text at all, is refused cleanly."""
    path = workdir / "bytes.yaml"
    path.write_bytes(data)
    checked(lambda: load_settings(path))


def _env_fields(schema: dict[str, Any], name: str = "", path: str = "") -> list[tuple[str, ...]]:
    """(SHADOW_PROXY_ suffix, dotted path, kind) of every setting reachable with ``__``.
    Kind: "section" (JSON), "typed" (refuses a word like ``x!``) or "text"."""
    if "$ref" in schema:
        schema = SCHEMA["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    found: list[tuple[str, ...]] = []
    for prop, sub in schema.get("properties", {}).items():
        env, dotted = f"{name}__{prop}".strip("_").upper(), f"{path}.{prop}".strip(".")
        options = [s for s in sub.get("anyOf", [sub]) if s.get("type") != "null"]
        kinds = {o.get("type") for o in options}
        if len(options) == 1 and "$ref" in options[0]:
            found += [(env, dotted, "section"), *_env_fields(options[0], env, dotted)]
        elif kinds & {"array", "object"}:
            found.append((env, dotted, "section"))
        elif all(o.get("type") != "string" or {"pattern", "enum"} & set(o) for o in options):
            found.append((env, dotted, "typed"))
        else:
            found.append((env, dotted, "text"))
    return found


ENV_FIELDS = _env_fields(SCHEMA)
env_names = st.sampled_from([f[0] for f in ENV_FIELDS] + ["NOPE", "ROUTES__0__NAME", ""])
env_values = st.sampled_from(
    ["", "abc", "-1", "1e999", "nan", "[", "{", "{}", "[]", "null", "true", '{"a": 1}',
     '[{"name": 1}]', "[" * 3000, "9" * 5000, '{"legacy": {"url": "ftp://x"}}']
)  # fmt: skip
env_values |= st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=10
)


@settings(FUZZ, max_examples=200)
@given(st.dictionaries(env_names, env_values, max_size=3))
@example({"ROUTES": "["})  # was pydantic_settings.SettingsError
@example({"SHADOW__DROP_HEADERS": "[" * 3000})  # was RecursionError
def test_any_environment_override_gives_settings_or_a_config_error(env: dict[str, str]) -> None:
    """SHADOW_PROXY_* overrides with any value (broken JSON, deep nesting, huge numbers):
    Settings or a ConfigError naming the field, never a pydantic-settings exception."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(f"SHADOW_PROXY_{name}", value)
        checked(lambda: settings_from(MINIMAL), MINIMAL)


WORD = st.from_regex(r"[a-z]{1,6}[!?~{\[]", fullmatch=True)  # not a number, flag, choice, JSON


@settings(FUZZ, max_examples=100)
@given(st.sampled_from([f for f in ENV_FIELDS if f[2] != "text"]), WORD)
def test_a_garbage_override_is_refused_naming_its_field(field: tuple[str, ...], word: str) -> None:
    """A word where a number, flag, choice, duration, size or JSON section belongs is a
    ConfigError naming that field (a broken JSON section: its top-level setting)."""
    name, dotted, kind = field
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(f"SHADOW_PROXY_{name}", word)
        refused = checked(lambda: settings_from(MINIMAL), MINIMAL)
    assert isinstance(refused, ConfigError)
    top = dotted.split(".")[0]
    where = (f"{dotted}:",) if kind == "typed" else (f"{top}:", f"{top}.")
    assert any(p.startswith(where) for p in refused.problems), refused.problems


refused_configs = configs.filter(
    lambda doc: isinstance(checked(lambda: settings_from(doc)), ConfigError)
)


def check_config(path: Path) -> subprocess.Popen[str]:
    command = [CLI, "check-config", str(path)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.e2e
@settings(FUZZ, max_examples=2)
@given(st.lists(refused_configs, min_size=5, max_size=5, unique_by=yaml.safe_dump))
def test_check_config_reports_each_problem_on_one_line_and_exits_2(
    workdir: Path, docs: list[Any]
) -> None:
    """`shadow-proxy check-config` on invalid files (5 at once, 2 rounds): exit 2, nothing
    on stdout, and on stderr a header plus exactly the loader's problems, no traceback."""
    cases = []
    for i, doc in enumerate(docs):
        path = workdir / f"cli-{i}.yaml"
        path.write_text(yaml.safe_dump(doc), encoding="utf-8")
        expected = checked(lambda path=path: load_settings(path), doc)
        assert isinstance(expected, ConfigError)
        cases.append((path, expected.problems))
    processes = [check_config(path) for path, _ in cases]  # all at once: 2 cores, 5 starts
    outputs = [process.communicate(timeout=60) for process in processes]
    for (path, problems), process, (out, err) in zip(cases, processes, outputs, strict=True):
        assert (process.returncode, out) == (2, ""), err
        header = f"error: {path} is not a valid config:"
        assert same(err.splitlines()) == same([header, *(f"  - {p}" for p in problems)])


def same(lines: list[str]) -> list[str]:
    """A RecursionError's text depends on the stack depth it hit; the rest must agree."""
    return [re.sub(r"maximum recursion depth exceeded.*", "(recursion)", line) for line in lines]
