"""Noise cancellation: settings, learning from same-backend pairs, bounds, un-learning,
adjusting comparisons, and the config snippet that freezes learned noise."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from comparators import (
    Comparison,
    Difference,
    DiffKind,
    HeadersComparator,
    JsonComparator,
    Result,
    Sample,
    Verdict,
    combine,
    compare,
)
from comparators.paths import format_path
from proxy.noise import NEVER_LEARNED, NoiseLearner, NoiseSettings

settings.register_profile("noise", database=None, deadline=None, max_examples=200)
PROFILE = settings.get_profile("noise")

CHANGED = DiffKind.CHANGED


def diffs(*paths: str) -> list[Difference]:
    return [Difference(p, CHANGED, 1, 2) for p in paths]


def learner(pairs: Sequence[Sequence[str]] = (), **options: Any) -> NoiseLearner:
    """A learner with min_pairs=1 unless told, fed one pair per entry of ``pairs``."""
    noise = NoiseLearner(NoiseSettings(**{"min_pairs": 1, **options}))
    for paths in pairs:
        noise.observe(diffs(*paths))
    return noise


def mismatch(comparator: str, *paths: str, score: float = 0.5, reason: str = "r") -> Result:
    return Result(comparator, Verdict.MISMATCH, score, tuple(diffs(*paths)), reason)


def json_bodies(legacy: Any, agent: Any) -> Comparison:
    """The real json and status comparators on two JSON answers."""
    return compare(
        [JsonComparator(), HeadersComparator(names=())],
        Sample(200, body=orjson.dumps(legacy)),
        Sample(200, body=orjson.dumps(agent)),
    )


# --- settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field", "why"),
    [
        ({"percent": -1}, "percent", "greater than or equal to 0"),
        ({"percent": 100.5}, "percent", "less than or equal to 100"),
        ({"percent": float("nan")}, "percent", "less than or equal to 100"),
        ({"threshold": 0}, "threshold", "greater than 0"),
        ({"threshold": 1.01}, "threshold", "less than or equal to 1"),
        ({"min_pairs": 0}, "min_pairs", "greater than or equal to 1"),
        ({"max_fields": 0}, "max_fields", "greater than or equal to 1"),
        ({"backend": "both"}, "backend", "'legacy' or 'agent'"),
        ({"gate": "best"}, "gate", "'adjusted' or 'raw'"),
        ({"fields": ["$.ok", "$.a["]}, "fields.1", "bad path '$.a[' at position 4"),
        ({"fields": ["meta.ts x"]}, "fields.0", "expected a JSON path"),
        ({"fields": [""]}, "fields.0", "expected a JSON path"),
        ({"window": 30}, "window", "at least 2 x min_pairs (20)"),
        ({"colour": "red"}, "colour", "Extra inputs are not permitted"),
    ],
)
def test_invalid_noise_settings_name_the_field_and_the_reason(
    options: dict[str, Any], field: str, why: str
) -> None:
    """A bad noise section is rejected with the offending field and why."""
    with pytest.raises(ValidationError) as info:
        NoiseSettings(**options)
    text = str(info.value)
    assert field in text
    assert why in text


@pytest.mark.parametrize(
    ("given_field", "stored"),
    [
        ("$['meta'].ts", "$.meta.ts"),
        ("$.items[*].id", "$.items[*].id"),
        ("$..request_id", "$..request_id"),
        ("  $.a  ", "$.a"),
        ("headers.date", "headers.date"),
        ("status", "status"),
        ("tool_calls[2].arguments", "tool_calls[*].arguments"),
    ],
)
def test_noise_fields_are_stored_in_canonical_form(given_field: str, stored: str) -> None:
    """Frozen fields are kept as the canonical path, so snapshots and snippets compare equal."""
    assert NoiseSettings(fields=[given_field]).fields == (stored,)


def test_default_window_scales_with_min_pairs() -> None:
    """Without an explicit window the counts age after max(1000, 10 x min_pairs) pairs."""
    assert NoiseSettings().effective_window == 1000
    assert NoiseSettings(min_pairs=500).effective_window == 5000
    assert NoiseSettings(window=40).effective_window == 40


# --- learning ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pairs", "differing", "min_pairs", "threshold", "noisy"),
    [
        (19, 19, 20, 0.1, False),  # too few pairs yet, however noisy
        (20, 2, 20, 0.1, True),  # 10% of 20 pairs: at the threshold
        (20, 1, 20, 0.1, False),  # 5%: below
        (50, 50, 20, 1.0, True),  # threshold 1.0: differs in every pair
        (50, 49, 20, 1.0, False),
    ],
)
def test_a_path_is_noise_once_it_differs_in_enough_pairs(
    pairs: int, differing: int, min_pairs: int, threshold: float, noisy: bool
) -> None:
    """Noise needs min_pairs pairs and a difference rate of at least the threshold."""
    noise = NoiseLearner(NoiseSettings(min_pairs=min_pairs, threshold=threshold))
    for i in range(pairs):  # the differing pairs come last: the rate is final when judged
        noise.observe(diffs("$.ts") if i >= pairs - differing else [])
    assert ("$.ts" in noise.noisy()) is noisy


def test_observe_returns_a_path_only_when_it_is_newly_learned() -> None:
    """The learned path is reported once, on the pair that tips it over, for one log event."""
    noise = NoiseLearner(NoiseSettings(min_pairs=3, threshold=0.5))
    reported = [noise.observe(diffs("$.id", "$.ts")) for _ in range(5)]
    assert reported == [[], [], ["$.id", "$.ts"], [], []]


def test_array_indices_count_as_one_field() -> None:
    """$.items[3].id and $.items[7].id differ in the same field: one counted path."""
    noise = learner([["$.items[3].id"], ["$.items[7].id", "$.items[8].id"]], threshold=1.0)
    assert noise.noisy() == {"$.items[*].id"}
    (row,) = noise.snapshot()
    assert (row["path"], row["differed"], row["pairs"]) == ("$.items[*].id", 2, 2)


@pytest.mark.parametrize("path", sorted(NEVER_LEARNED))
def test_a_whole_answer_is_counted_but_never_learned(path: str) -> None:
    """A flaky legacy must not switch the comparison off: $, body and status stay compared."""
    noise = learner([[path]] * 10)
    assert noise.noisy() == frozenset()
    assert noise.snapshot()[0]["rate"] == 1.0


def test_a_path_that_cannot_be_frozen_is_never_learned() -> None:
    """Only paths that load back from the config snippet are learned."""
    noise = learner([["tool calls#1"], ["tool calls#1"]])
    assert noise.noisy() == frozenset()


def test_counts_stay_within_max_fields_and_the_rest_overflow() -> None:
    """Past max_fields tracked paths, new paths are counted in overflow, never tracked."""
    noise = learner([["$.a", "$.b", "$.c"], ["$.d"], ["$.a", "$.e"]], max_fields=2)
    assert [row["path"] for row in noise.snapshot()] == ["$.a", "$.b"]
    assert noise.overflow == 3  # $.c, $.d, $.e


def test_counts_age_and_free_slots_for_new_paths() -> None:
    """Every window pairs the counts halve; a path that reaches zero gives its slot back."""
    noise = learner([["$.old"], ["$.new"], [], []], max_fields=1, window=4, threshold=0.9)
    assert noise.pairs == 2  # halved at the 4th pair
    assert noise.snapshot() == []  # $.old: 1 // 2 == 0, dropped
    noise.observe(diffs("$.new"))
    assert [row["path"] for row in noise.snapshot()] == ["$.new"]
    assert noise.overflow == 1  # the first $.new


def test_learned_noise_is_unlearned_when_the_field_stops_differing() -> None:
    """A field that became deterministic is compared again: its rate fell below threshold/2."""
    noise = NoiseLearner(NoiseSettings(min_pairs=10, threshold=0.5, window=20))
    learned = [noise.record(diffs("$.ts")) for _ in range(10)]
    assert learned[-1] == (["$.ts"], [])
    changes = [noise.record([]) for _ in range(40)]
    unlearned = [i for i, (_, gone) in enumerate(changes) if gone == ["$.ts"]]
    assert len(unlearned) == 1
    assert noise.noisy() == frozenset()


def test_a_learned_field_between_half_and_full_threshold_stays_learned() -> None:
    """Hysteresis: a learned field stays noise down to half the threshold, so it does not flap."""
    noise = NoiseLearner(NoiseSettings(min_pairs=10, threshold=0.4, window=1000))
    for _ in range(10):
        noise.observe(diffs("$.ts"))
    gone = [noise.record([])[1] for _ in range(41)]
    assert noise.snapshot()[0]["rate"] == round(10 / 51, 4)
    assert gone[:40] == [[]] * 40  # down to 10 of 50 pairs (0.2): still noise
    assert gone[40] == ["$.ts"]  # 10 of 51: under half the threshold


def test_frozen_fields_are_noise_from_the_start_and_never_counted() -> None:
    """Config-frozen fields are discounted without any pair and take no counting slot."""
    noise = learner([["$.meta.ts", "$.x"]], fields=["$.meta"], max_fields=1, threshold=1.0)
    assert noise.noisy() == {"$.meta", "$.x"}
    assert [(r["path"], r["frozen"]) for r in noise.snapshot()] == [
        ("$.meta", True),
        ("$.x", False),
    ]


# --- adjusting comparisons ------------------------------------------------------------------


def test_a_json_mismatch_only_in_noise_becomes_a_match_with_a_reason() -> None:
    """The real json comparator's differences at learned paths no longer count."""
    noise = learner([["$.items[0].id", "$.ts"]])
    raw = json_bodies(
        {"items": [{"id": 1}, {"id": 2}], "ts": 1}, {"items": [{"id": 3}, {"id": 4}], "ts": 2}
    )
    assert raw.verdict is Verdict.MISMATCH
    adjusted = noise.adjust(raw)
    assert (adjusted.verdict, adjusted.score, adjusted.differences) == (Verdict.MATCH, 1.0, ())
    assert adjusted.reason == "3 differences were noise"
    assert adjusted.results[0] == Result(
        "json", Verdict.MATCH, 1.0, (), "all 3 differences were noise"
    )


def test_partial_noise_keeps_the_mismatch_and_raises_the_score_by_the_noise_share() -> None:
    """One of two differing leaves is noise: the json score moves half way to 1."""
    noise = learner([["$.ts"]])
    raw = json_bodies({"ts": 1, "a": 1, "b": 1, "c": 1}, {"ts": 2, "a": 2, "b": 1, "c": 1})
    adjusted = noise.adjust(raw)
    json_result = adjusted.results[0]
    assert (raw.results[0].score, json_result.score) == (0.5, 0.75)
    assert json_result.reason == "2 differences in 4 compared leaves; 1 of them noise"
    assert adjusted.verdict is Verdict.MISMATCH
    assert [d.path for d in adjusted.differences] == ["$.a"]
    assert adjusted.reason == "json: 2 differences in 4 compared leaves; 1 of them noise"


def test_the_headers_score_is_recomputed_exactly() -> None:
    """For the headers comparator the noise-share formula gives its own score without noise."""
    noise = learner([["headers.date"]])
    comparator = HeadersComparator(names=("date", "etag", "content-type", "x-a"))
    legacy = Sample(200, {"date": "1", "etag": "a", "content-type": "j", "x-a": "1"})
    agent = Sample(200, {"date": "2", "etag": "b", "content-type": "j", "x-a": "1"})
    adjusted = noise.adjust(compare([comparator], legacy, agent))
    assert adjusted.results[0].score == 1.0 - 1 / 4  # only etag differs now


def test_unlisted_json_differences_keep_a_mismatch() -> None:
    """Differences past max_differences are not listed, so noise cannot account for them."""
    noise = learner([["$.a"]])
    raw = compare(
        [JsonComparator(max_differences=1)],
        Sample(200, body=b'{"a": 1, "b": 1}'),
        Sample(200, body=b'{"a": 2, "b": 2}'),
    )
    adjusted = noise.adjust(raw)
    assert [d.path for d in raw.differences] == ["$.a"]
    assert adjusted.verdict is Verdict.MISMATCH
    assert adjusted.score == 0.5  # one of the two differences was noise


NOISE = ["$.meta", "headers.date"]


@pytest.mark.parametrize(
    ("comparison", "verdict", "score", "paths"),
    [
        (combine([mismatch("json", "$.meta.ts", "$.meta[2].x")]), Verdict.MATCH, 1.0, []),
        (combine([mismatch("json", "$.metadata")]), Verdict.MISMATCH, 0.5, ["$.metadata"]),
        (
            combine([mismatch("h", "headers.date", "headers.etag")]),
            Verdict.MISMATCH,
            0.75,
            ["headers.etag"],
        ),
        # A semantic score has no differences to discount: the comparison stays a mismatch.
        (
            combine([mismatch("json", "$.meta.ts"), mismatch("semantic", score=0.2)]),
            Verdict.MISMATCH,
            0.6,
            [],
        ),
        (
            combine([mismatch("json", "$.meta.ts"), Result("judge", Verdict.ERROR, 0.0)]),
            Verdict.ERROR,
            0.5,
            ["$.meta.ts"],
        ),
        (Comparison(Verdict.MISMATCH, 0.0, tuple(diffs("headers.date"))), Verdict.MATCH, 1.0, []),
        (
            Comparison(Verdict.MISMATCH, 0.5, tuple(diffs("$.meta", "$.x"))),
            Verdict.MISMATCH,
            0.75,
            ["$.x"],
        ),
        (
            Comparison(Verdict.MATCH, 1.0, tuple(diffs("$.meta.ts"))),
            Verdict.MATCH,
            1.0,
            ["$.meta.ts"],
        ),
        (Comparison.skipped("no body"), Verdict.SKIPPED, 0.0, []),
    ],
)
def test_adjust_discounts_noise_and_anything_under_it(
    comparison: Comparison, verdict: Verdict, score: float, paths: list[str]
) -> None:
    """Noisy paths and their subtrees are removed; only a mismatch changes its verdict."""
    adjusted = learner(fields=NOISE).adjust(comparison)
    assert adjusted.verdict is verdict
    assert adjusted.score == pytest.approx(score)
    assert [d.path for d in adjusted.differences] == paths


@pytest.mark.parametrize(
    ("field", "path", "discounted"),
    [
        ("$..request_id", "$.a[3].request_id", True),
        ("$..request_id", "$.request_ids", False),
        ("$.items[0].id", "$.items[0].id", True),
        ("$.items[0].id", "$.items[1].id", False),
        ("$.*.ts", "$.meta.ts", True),
        ("$", "$.anything", True),
        ("headers.date", "headers.date-2", False),
        ("tool_calls[*]", "tool_calls[4].name", True),
        ("body", "body", True),
    ],
)
def test_frozen_patterns_match_the_paths_they_describe(
    field: str, path: str, discounted: bool
) -> None:
    """Frozen fields may use the path grammar's wildcards and name exact indices."""
    noise = learner(fields=[field])
    assert noise.is_noise(path) is discounted


# --- snapshot and freezing --------------------------------------------------------------------


def test_snapshot_lists_noisiest_paths_first_with_their_rates() -> None:
    """Admin sees each counted path's rate over the pairs, and whether it is noise now."""
    noise = learner([["$.a", "$.b"], ["$.a"], ["$.a"], []], threshold=0.5)
    assert noise.snapshot() == [
        {"path": "$.a", "pairs": 4, "differed": 3, "rate": 0.75, "noise": True, "frozen": False},
        {"path": "$.b", "pairs": 4, "differed": 1, "rate": 0.25, "noise": True, "frozen": False},
    ]  # $.b was learned at pair 1 (100%); 25% is still over half the threshold


def test_freeze_yaml_round_trips_into_the_route_settings() -> None:
    """The snippet pastes into a route and loads back as the same noise fields."""
    noise = learner([['$["a b"].c', "$.items[2].id", "headers.date"]], fields=["$..trace"])
    snippet = noise.freeze_yaml("orders")
    assert snippet.startswith("# 3 learned noise field(s) after 1 pair(s), 1 frozen")
    (route,) = yaml.safe_load(snippet)["routes"]
    assert route["name"] == "orders"
    loaded = NoiseSettings(**route["noise"])
    assert set(loaded.fields) == noise.noisy()
    assert NoiseLearner(loaded).noisy() == noise.noisy()


# --- properties ---------------------------------------------------------------------------------

keys = st.sampled_from(["a", "b", "meta", "ts", "x y", "0", "", "it's", "k:v", "true"])
json_paths = st.lists(keys | st.integers(0, 3), max_size=3).map(format_path)
other_paths = st.sampled_from(["status", "body", "headers.date", "headers.etag", "tool_calls[1]"])
paths = json_paths | other_paths
pair_lists = st.lists(st.lists(paths, max_size=6), max_size=30)
frozen = st.lists(st.sampled_from(["$.meta", "$..ts", "headers.date", "$.a[*]"]), max_size=2)
results = st.builds(
    Result,
    comparator=st.sampled_from(["json", "headers", "semantic"]),
    verdict=st.sampled_from(list(Verdict)),
    score=st.floats(0, 1),
    differences=st.lists(paths.map(lambda p: Difference(p, CHANGED)), max_size=4).map(tuple),
    reason=st.sampled_from(["", "r", "1 difference; 3 not listed (max_differences=1)"]),
)
comparisons = st.lists(results, max_size=4).map(combine) | st.builds(
    Comparison,
    verdict=st.sampled_from(list(Verdict)),
    score=st.floats(0, 1),
    differences=st.lists(paths.map(lambda p: Difference(p, CHANGED)), max_size=4).map(tuple),
)
RANK = {Verdict.SKIPPED: 0, Verdict.MATCH: 1, Verdict.MISMATCH: 2, Verdict.ERROR: 3}


@settings(PROFILE)
@given(pair_lists, frozen, comparisons, st.integers(1, 5), st.sampled_from([0.1, 0.5, 1.0]))
def test_adjust_never_worsens_is_idempotent_and_always_discounts_frozen_fields(
    pairs: list[list[str]],
    fields: list[str],
    comparison: Comparison,
    min_pairs: int,
    threshold: float,
) -> None:
    """Whatever was learned: no verdict gets worse, a second adjust changes nothing, and a
    mismatch keeps no difference at a frozen field."""
    noise = learner(pairs, fields=fields, min_pairs=min_pairs, threshold=threshold)
    adjusted = noise.adjust(comparison)
    assert RANK[adjusted.verdict] <= RANK[comparison.verdict]
    assert adjusted.verdict is comparison.verdict or adjusted.verdict is Verdict.MATCH
    assert noise.adjust(adjusted) == adjusted
    assert 0.0 <= adjusted.score <= 1.0
    if comparison.verdict is Verdict.MISMATCH:
        frozen_only = NoiseLearner(NoiseSettings(fields=fields))
        assert not any(frozen_only.is_noise(d.path) for d in adjusted.differences)
        if comparison.results:
            assert adjusted.score >= comparison.score - 1e-9


@settings(PROFILE)
@given(pair_lists, st.integers(1, 4), st.integers(1, 3), st.sampled_from([0.1, 0.5, 1.0]))
def test_counts_stay_bounded_whatever_the_pairs(
    pairs: list[list[str]], max_fields: int, min_pairs: int, threshold: float
) -> None:
    """Tracked paths never exceed max_fields, learned ones are among them, pairs stay under
    the window, and a whole answer is never learned."""
    window = 2 * min_pairs + 1
    noise = learner(
        pairs, max_fields=max_fields, min_pairs=min_pairs, threshold=threshold, window=window
    )
    rows = noise.snapshot()
    assert len(rows) <= max_fields
    assert noise.noisy() <= {row["path"] for row in rows}
    assert noise.noisy().isdisjoint(NEVER_LEARNED)
    assert noise.pairs < window
    assert all(0 < row["differed"] <= noise.pairs for row in rows)


@settings(PROFILE)
@given(pair_lists, frozen)
def test_any_learned_noise_freezes_into_a_snippet_that_loads_back(
    pairs: list[list[str]], fields: list[str]
) -> None:
    """freeze_yaml output always validates as NoiseSettings and keeps every noisy path."""
    noise = learner(pairs, fields=fields)
    (route,) = yaml.safe_load(noise.freeze_yaml("r-1"))["routes"]
    assert set(NoiseSettings(**route["noise"]).fields) == noise.noisy()
