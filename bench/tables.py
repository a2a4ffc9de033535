"""Tables, rendered as aligned text for the terminal and as Markdown for the doc."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from bench.figures import RATIO_KEYS, Figures
from bench.scenarios import ScenarioResult
from bench.targets import Target

Cell = float | int | None
Format = Callable[[Cell], str]


def _fmt(pattern: str) -> Format:
    return lambda v: "-" if v is None else pattern.format(v)


def _share(value: Cell) -> str:
    """A percentage; a small one keeps two significant digits (nginx's 0.047%)."""
    if value is None:
        return "-"
    pct = value * 100
    return f"{pct:.1f}%" if pct >= 1 or pct == 0 else f"{pct:.2g}%"


def _times(value: Cell) -> str:
    return "-" if value is None else f"{value:.2f}x"


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    fmt: Format


RPS = Column("rps", "req/s", _fmt("{:.0f}"))
ERRORS = Column("errors", "errors", _fmt("{}"))
CPU = Column("cpu_s_per_1k", "CPU s/1k req", _fmt("{:.3f}"))
RSS = Column("peak_rss_mb", "peak RSS MB", _fmt("{:.1f}"))
MIRRORED = Column("mirrored", "mirrored", _share)


@dataclass(frozen=True)
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    left: tuple[int, ...] = (0,)  # columns aligned left (text); the others are numbers

    def text(self) -> str:
        all_rows = [self.headers, *self.rows]
        widths = [max(len(row[i]) for row in all_rows) for i in range(len(self.headers))]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(
                c.ljust(w) if i in self.left else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()

        rule = "  ".join("-" * w for w in widths)
        return "\n".join([line(self.headers), rule, *(line(row) for row in self.rows)])

    def markdown(self) -> str:
        lines = [
            "| " + " | ".join(self.headers) + " |",
            "|"
            + "|".join("---" if i in self.left else "---:" for i in range(len(self.headers)))
            + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


def columns(result: ScenarioResult) -> list[Column]:
    scenario = result.scenario
    latency = "TTFB " if scenario.kind == "sse" else ""
    cols = [
        RPS,
        Column("p50_ms", f"{latency}p50 ms", _fmt("{:.2f}")),
        Column("p99_ms", f"{latency}p99 ms", _fmt("{:.2f}")),
    ]
    if scenario.direct:
        cols += [
            Column("added_p50_ms", "+p50 ms", _fmt("{:+.2f}")),
            Column("added_p99_ms", "+p99 ms", _fmt("{:+.2f}")),
        ]
    cols += [ERRORS, CPU, RSS]
    if scenario.agent is not None:
        cols.append(MIRRORED)
    if scenario.name == "slow-agent":
        cols += [
            Column("rps_vs_passthrough", "req/s vs passthrough", _share),
            Column("p99_vs_passthrough", "p99 vs passthrough", _times),
        ]
    return cols


def scenario_table(
    result: ScenarioResult,
    figures: Mapping[str, Figures],
    ratios: Mapping[str, Mapping[str, float | None]],
) -> Table:
    """A row per peer, then a row per ratio (shadow-proxy / Envoy, / nginx)."""
    cols = columns(result)
    rows = [[peer, *(c.fmt(values[c.key]) for c in cols)] for peer, values in figures.items()]
    for pair, values in ratios.items():
        rows.append([pair, *(_times(values[c.key]) if c.key in RATIO_KEYS else "" for c in cols)])
    return Table(["peer", *(c.title for c in cols)], rows)


def shadow_outcomes(result: ScenarioResult) -> dict[str, int]:
    """shadow-proxy's own counts of its shadow requests by outcome, over all runs."""
    summary = result.peers.get("shadow-proxy")
    counts: dict[str, int] = {}
    for run in summary.runs if summary else ():
        for key, value in run.extra.items():
            if key.startswith("shadow_") and value:
                name = key.removeprefix("shadow_")
                counts[name] = counts.get(name, 0) + int(value)
    return counts


def outcomes_line(result: ScenarioResult) -> str:
    counts = shadow_outcomes(result)
    if not counts or result.scenario.agent is None:
        return ""
    parts = ", ".join(f"{name} {count}" for name, count in sorted(counts.items()))
    return f"shadow-proxy's shadow requests by outcome: {parts}"


def targets_table(targets: Sequence[Target]) -> Table:
    rows = []
    for t in targets:
        if t.unit == "%":  # a share: measured and limit are fractions
            value = _share(t.measured)
            limit = "-" if t.limit is None else _share(t.limit)
        else:
            value = "-" if t.measured is None else f"{t.measured:.2f}{t.unit}"
            limit = "-" if t.limit is None else f"{t.limit:g}{t.unit}"
        if t.limit is not None:
            limit = f"{'≥' if t.at_least else '≤'} {limit}"
        verdict = {True: "pass", False: "FAIL", None: "-"}[t.passed]
        rows.append([t.name, value, limit, verdict, t.note])
    return Table(["target", "measured", "limit", "result", "note"], rows, left=(0, 4))
