"""The chart's monitoring, offline and with real tools only: the Helm SDK renders
the ServiceMonitor (PodMonitor in embedded mode), the PrometheusRule and the
Grafana dashboard; promtool checks the rules and runs alerts_test.yaml against
them; and a real proxy, driven through every path the alerts and panels look
at, proves over HTTP that each series, label and label value they query is one
it exports."""

from __future__ import annotations

import asyncio
import copy
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import chart
import helm_python as helm
import pytest
import yaml
from aiohttp.test_utils import TestClient
from fakes import Fake, Reply
from prometheus_client.parser import text_string_to_metric_families

from proxy.admin import Health, create_admin_app
from proxy.app import TASKS, Core, build_metrics, create_app
from proxy.settings import load_settings

HERE = Path(__file__).parent
DASHBOARD = chart.CHART / "dashboards" / "shadow-proxy.json"
UNIT_TESTS = HERE / "alerts_test.yaml"

ALL_ON: dict[str, Any] = {
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "dashboard": {"enabled": True, "annotations": {"grafana_folder": "shadow-proxy"}},
}
EMBEDDED: dict[str, Any] = {"mode": "embedded"}
POD_SELECTOR = {"app.kubernetes.io/name": "orders"}
ALERTS = {
    "ShadowProxyAgreementLow",
    "ShadowProxyFallbackRateHigh",
    "ShadowProxyCircuitOpen",
    "ShadowProxyShadowDropping",
    "ShadowProxyRolledBack",
}
# Added by Prometheus when it scrapes a target, never in the proxy's exposition.
TARGET_LABELS = {"namespace", "job", "instance", "pod"}
MODES = {"sidecar": chart.SIDECAR, "standalone": chart.STANDALONE}


def values(base: dict[str, Any], monitoring: dict[str, Any] | None = None) -> dict[str, Any]:
    return chart.merged(base) if monitoring is None else chart.merged(base, monitoring=monitoring)


def monitoring_objects(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """kind -> object, for what the monitoring templates render (the dashboard
    ConfigMap under the key "Dashboard")."""
    found: dict[str, dict[str, Any]] = {}
    for doc in docs:
        kind = doc["kind"]
        if kind == "ConfigMap" and "shadow-proxy.json" in doc.get("data", {}):
            kind = "Dashboard"
        if kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule", "Dashboard"):
            assert kind not in found, f"two {kind}s"
            found[kind] = doc
    return found


def rule_groups(monitoring: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    on = {"prometheusRule": {"enabled": True, **(monitoring or {})}}
    rule = chart.one(chart.manifests(values(chart.SIDECAR, on)), "PrometheusRule")
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def alert_rules(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed: run `make system-deps` (Debian package prometheus)")
    return subprocess.run(
        [binary, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard_panels(dashboard) for t in p["targets"]]
    exprs += [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    return exprs


def variable_queries(dashboard: dict[str, Any]) -> dict[str, str]:
    return {
        v["name"]: v["query"]["query"]
        for v in dashboard["templating"]["list"]
        if v["type"] == "query"
    }


# -- rendering ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [*MODES, "embedded"])
def test_monitoring_is_off_by_default(mode: str) -> None:
    base = MODES.get(mode, EMBEDDED)
    assert monitoring_objects(chart.manifests(values(base))) == {}


@pytest.mark.parametrize("mode", MODES)
def test_everything_on_renders_each_object_once_and_lints_clean(mode: str) -> None:
    vals = values(MODES[mode], ALL_ON)
    assert set(monitoring_objects(chart.manifests(vals))) == {
        "ServiceMonitor",
        "PrometheusRule",
        "Dashboard",
    }
    report = chart.lint(vals)  # helm_python.lint(chart, values, strict=True)
    assert report["messages"] == [] and report["errors"] == [], report


@pytest.mark.parametrize("part", ["serviceMonitor", "prometheusRule", "dashboard"])
@pytest.mark.parametrize("mode", MODES)
def test_each_part_is_switched_on_alone(mode: str, part: str) -> None:
    kind = {"serviceMonitor": "ServiceMonitor", "prometheusRule": "PrometheusRule"}
    only = {part: ALL_ON[part]}
    found = monitoring_objects(chart.manifests(values(MODES[mode], only)))
    assert set(found) == {kind.get(part, "Dashboard")}


@pytest.mark.parametrize("mode", MODES)
def test_the_service_monitor_scrapes_the_services_admin_port(mode: str) -> None:
    monitoring = copy.deepcopy(ALL_ON)
    monitoring["serviceMonitor"].update(interval="15s", scrapeTimeout="5s")
    docs = chart.manifests(values(MODES[mode], monitoring))
    monitor = chart.one(docs, "ServiceMonitor")
    services = [d for d in docs if d["kind"] == "Service"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    # It selects the admin Service alone by its own labels, and only this release's.
    [service] = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
    assert service["spec"]["selector"].items() <= selector.items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [chart.NAMESPACE]}
    assert monitor["spec"]["endpoints"] == [
        {"port": "admin", "path": "/metrics", "scheme": "http", "interval": "15s",
         "scrapeTimeout": "5s"}
    ]  # fmt: skip
    assert "admin" in {p["name"] for p in service["spec"]["ports"]}
    labels = monitor["metadata"]["labels"]
    assert labels["release"] == "kube-prometheus-stack"
    assert labels["app.kubernetes.io/instance"] == chart.RELEASE


def test_embedded_mode_gets_a_pod_monitor_on_the_given_pods() -> None:
    monitoring = copy.deepcopy(ALL_ON)
    monitoring["serviceMonitor"]["podSelector"] = POD_SELECTOR
    found = monitoring_objects(chart.manifests(values(EMBEDDED, monitoring)))
    assert set(found) == {"PodMonitor", "PrometheusRule", "Dashboard"}
    spec = found["PodMonitor"]["spec"]
    assert spec["selector"] == {"matchLabels": POD_SELECTOR}
    assert spec["podMetricsEndpoints"][0]["port"] == "admin"  # the container port's name
    assert spec["podMetricsEndpoints"][0]["path"] == "/metrics"


def test_embedded_mode_without_a_pod_selector_says_what_is_missing() -> None:
    with pytest.raises(helm.HelmError, match=r"monitoring\.serviceMonitor\.podSelector"):
        chart.render(values(EMBEDDED, ALL_ON))


def test_the_prometheus_rule_takes_its_thresholds_labels_and_severities_from_values() -> None:
    custom = {
        "labels": {"team": "payments"},
        "agreementTarget": 0.9,
        "fallbackRateMax": 0.02,
        "shadowDropRateMax": 0.25,
        "minSamples": 50,
        "rateWindow": "15m",
        "for": "30m",
        "groupBy": [],
        "severity": {"rolledBack": "page"},
    }
    on = {"prometheusRule": {"enabled": True, **custom}}
    rule = chart.one(chart.manifests(values(chart.SIDECAR, on)), "PrometheusRule")
    assert rule["metadata"]["labels"]["team"] == "payments"
    rules = alert_rules(rule["spec"]["groups"])
    assert set(rules) == ALERTS
    exprs = {name: " ".join(r["expr"].split()) for name, r in rules.items()}
    assert ") < 0.9 and" in exprs["ShadowProxyAgreementLow"]
    assert ") > 0.02 and" in exprs["ShadowProxyFallbackRateHigh"]
    assert ") > 0.25 and" in exprs["ShadowProxyShadowDropping"]
    for name in ("ShadowProxyAgreementLow", "ShadowProxyFallbackRateHigh"):
        assert exprs[name].endswith(">= 50") and "[15m]" in exprs[name]
    assert all("sum by (route)" in e for e in exprs.values())  # groupBy [] -> route only
    assert rules["ShadowProxyRolledBack"]["labels"]["severity"] == "page"
    assert rules["ShadowProxyAgreementLow"]["labels"]["severity"] == "warning"  # default kept
    assert "for" not in rules["ShadowProxyRolledBack"]  # a rollback alerts at once
    assert {r.get("for") for n, r in rules.items() if n != "ShadowProxyRolledBack"} == {"30m"}


def test_alert_annotations_keep_prometheus_templating_for_prometheus() -> None:
    for name, rule in alert_rules(rule_groups()).items():
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description"}, name
        assert "{{ $labels.route }}" in annotations["summary"], name


def test_default_aggregation_keeps_releases_apart_and_sums_over_pods() -> None:
    for name, rule in alert_rules(rule_groups()).items():
        by = set(re.findall(r"\bby \(([^)]*)\)", rule["expr"]))
        assert by == {"namespace, job, route"}, name
        assert "pod" not in rule["expr"] and "instance" not in rule["expr"], name


def test_the_dashboard_config_map_carries_the_json_and_the_sidecar_labels() -> None:
    docs = chart.manifests(values(chart.SIDECAR, ALL_ON))
    config_map = monitoring_objects(docs)["Dashboard"]
    assert config_map["metadata"]["name"] == f"{chart.RELEASE}-shadow-proxy-dashboard"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "shadow-proxy"}
    assert json.loads(config_map["data"]["shadow-proxy.json"]) == load_dashboard()


# -- promtool ---------------------------------------------------------------------------


def write_rules(path: Path, groups: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


@pytest.mark.parametrize(
    "monitoring",
    [{}, {"groupBy": []}, {"groupBy": ["cluster", "namespace"], "rateWindow": "1h", "for": "0s"}],
    ids=["defaults", "fleet-wide", "custom"],
)
def test_the_rendered_rules_pass_promtool_check(tmp_path: Path, monitoring: dict[str, Any]) -> None:
    result = promtool(
        "check", "rules", str(write_rules(tmp_path / "rules.yaml", rule_groups(monitoring)))
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout


def run_unit_tests(
    tmp_path: Path, groups: list[dict[str, Any]]
) -> subprocess.CompletedProcess[str]:
    """alerts_test.yaml against these rules. Each rule's long description is
    dropped (promtool compares annotations whole; `check rules` parses its
    templates); the summary, with $labels.route and $value, is compared."""
    stripped = copy.deepcopy(groups)
    for rule in (r for g in stripped for r in g["rules"]):
        rule.get("annotations", {}).pop("description", None)
    write_rules(tmp_path / "rules.yaml", stripped)
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    return promtool("test", "rules", UNIT_TESTS.name, cwd=tmp_path)


def test_each_alert_fires_when_it_should_and_stays_quiet_otherwise(tmp_path: Path) -> None:
    result = run_unit_tests(tmp_path, rule_groups())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_unit_tests_cover_every_alert_both_ways() -> None:
    spec = yaml.safe_load(UNIT_TESTS.read_text())
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in spec["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    assert fired == ALERTS and quiet == ALERTS
    no_traffic = next(c for c in spec["tests"] if c["name"] == "no traffic, no alert")
    assert {c["alertname"] for c in no_traffic["alert_rule_test"]} == ALERTS


@pytest.mark.parametrize(
    ("monitoring", "broken"),
    [
        ({"agreementTarget": 0.4}, "ShadowProxyAgreementLow"),
        ({"fallbackRateMax": 0.5}, "ShadowProxyFallbackRateHigh"),
        ({"shadowDropRateMax": 0.5}, "ShadowProxyShadowDropping"),
        ({"minSamples": 1}, "ShadowProxyAgreementLow"),
        ({"for": "30m"}, "ShadowProxyCircuitOpen"),
    ],
)
def test_the_unit_tests_notice_a_changed_rule(
    tmp_path: Path, monitoring: dict[str, Any], broken: str
) -> None:
    """The unit tests are written for the defaults: other values must fail them."""
    result = run_unit_tests(tmp_path, rule_groups(monitoring))
    assert result.returncode != 0
    assert f"alertname: {broken}" in result.stdout + result.stderr


def test_the_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses each panel query as a recording rule, Grafana's variables
    given plausible values."""
    dashboard = load_dashboard()
    grafana = {"$__rate_interval": "2m", "$__range": "6h", "$__interval": "30s"}
    rules = []
    for panel in dashboard_panels(dashboard):
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in grafana.items():
                expr = expr.replace(variable, value)
            expr = re.sub(r"\$(namespace|job|route)\b", ".*", expr)
            assert "$" not in expr, expr
            rules.append(
                {"record": f"dashboard:panel_{panel['id']}:{target['refId']}", "expr": expr}
            )
    path = write_rules(tmp_path / "dashboard.yaml", [{"name": "dashboard", "rules": rules}])
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


# -- the dashboard --------------------------------------------------------------------------


def test_the_dashboard_has_the_expected_panels_and_variables() -> None:
    dashboard = load_dashboard()
    panels = dashboard_panels(dashboard)
    titles = {p["title"] for p in panels}
    assert {
        "Agent share per route",
        "Agreement per route",
        "Fallbacks by reason",
        "Upstream latency by backend (p50 / p99)",
        "Shadow drops by outcome",
        "Requests by backend and status class",
        "Circuit breaker state (pods)",
        "Proxy overhead (p50 / p99)",
    } <= titles
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and len(titles) == len(panels)

    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["route"]["type"] == "query"
    assert re.fullmatch(
        r"label_values\(shadow_proxy_\w+(\{.*\})?, route\)", variables["route"]["query"]["query"]
    )
    uses = [p["datasource"] for p in panels] + [
        t["datasource"] for p in panels for t in p["targets"]
    ]
    assert all(d == {"type": "prometheus", "uid": "${datasource}"} for d in uses)

    by_title = {p["title"]: p for p in panels}
    latency = [t["expr"] for t in by_title["Upstream latency by backend (p50 / p99)"]["targets"]]
    for q in ("0.5", "0.99"):
        assert any(
            e.startswith(f"histogram_quantile({q}, sum by (backend, mode, le)")
            and "shadow_proxy_upstream_duration_seconds_bucket" in e
            for e in latency
        ), latency
    assert "shadow_proxy_rollout_percent" in by_title["Agent share per route"]["targets"][0]["expr"]
    tokens = by_title["Agent tokens per minute by route and mode"]["targets"][0]["expr"]
    assert tokens.startswith("sum by (route, mode, gen_ai_token_type) (rate(")
    assert "gen_ai_client_token_usage_sum{" in tokens and tokens.endswith(" * 60")


def test_the_agent_row_holds_cost_tools_budget_noise_and_recording() -> None:
    """Every panel under the Agent row reads one of the agent metrics."""
    panels = load_dashboard()["panels"]
    start = next(i for i, p in enumerate(panels) if p["type"] == "row" and p["title"] == "Agent")
    rows = [i for i, p in enumerate(panels) if p["type"] == "row" and i > start]
    below = panels[start + 1 : rows[0] if rows else None]
    agent = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in below}
    wanted = {
        "Agent tokens per minute by route and mode": "gen_ai_client_token_usage_sum",
        "Agent tokens per answer (p50 / p95)": "shadow_proxy_agent_tokens_per_request_bucket",
        "Agent operation duration (p50 / p95)": "gen_ai_client_operation_duration_seconds_bucket",
        "Agent tool calls by outcome": "shadow_proxy_agent_tool_calls_total",
        "Agent answers without token usage": "shadow_proxy_agent_usage_missing_total",
        "Shadow token budget remaining (lowest pod)": "shadow_proxy_shadow_token_budget_remaining",
        "Shadow requests dropped over the token budget": 'outcome="dropped_budget"',
        "Noise: pairs compared and mismatches discounted": "shadow_proxy_noise_discounted_total",
        "Noise fields per route": "shadow_proxy_noise_fields",
        "Learned noise fields (pods that learned each)": "shadow_proxy_noise_field{",
        "Recorded cases by outcome": "shadow_proxy_recorded_cases_total",
    }
    assert set(agent) == set(wanted)
    assert [title for title, name in wanted.items() if name not in agent[title]] == []


def test_dashboard_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in load_dashboard()["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


# Series about the pod, not a route: they have no route label.
PER_POD = {
    "shadow_proxy_shadow_in_flight",
    "shadow_proxy_config_reloads_total",
    "shadow_proxy_fleet_connected",
    "shadow_proxy_fleet_leader",
    "shadow_proxy_fleet_errors_total",
    "shadow_proxy_recorded_cases_total",
}


def test_every_dashboard_query_follows_the_variables() -> None:
    """A selector on a series with a route label must filter by $route (and every
    selector by $namespace and $job), or a panel would mix routes or releases."""
    exprs = dashboard_exprs(load_dashboard())
    for expr in exprs:
        for name, matchers in selectors(expr):
            found = {(label, op, value) for label, op, value in matchers}
            assert ("namespace", "=~", "$namespace") in found, expr
            assert ("job", "=~", "$job") in found, expr
            if name not in PER_POD:
                assert ("route", "=~", "$route") in found, expr


# -- against a real proxy -----------------------------------------------------------------------

# The proxy's own series, and the OpenTelemetry GenAI client ones it exports
# (agentmetrics.py; their labels are gen_ai_* too, but never gen_ai_client_*).
NAME = re.compile(r"\b(?:shadow_proxy|gen_ai_client)_[A-Za-z0-9_]*")
SELECTOR = re.compile(r"\b((?:shadow_proxy|gen_ai_client)_[A-Za-z0-9_]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
BY = re.compile(r"\bby\s*\(([^)]*)\)\s*\(")
LABEL_VALUES = re.compile(r"label_values\((shadow_proxy_\w+)(?:\{[^}]*\})?,\s*(\w+)\)")


def selectors(expr: str) -> Iterator[tuple[str, list[tuple[str, str, str]]]]:
    for match in SELECTOR.finditer(expr):
        yield match.group(1), MATCHER.findall(match.group(2))


def aggregations(expr: str) -> Iterator[tuple[list[str], str]]:
    """Each `by (labels) (inner)`: the labels and the inner expression."""
    for match in BY.finditer(expr):
        depth, start = 1, match.end()
        end = start
        while depth:
            depth += {"(": 1, ")": -1}.get(expr[end], 0)
            end += 1
        labels = [label.strip() for label in match.group(1).split(",") if label.strip()]
        yield labels, expr[start : end - 1]


class Exposition:
    """What one /metrics answer holds: sample name -> label name -> values seen."""

    def __init__(self, text: str) -> None:
        self.labels: dict[str, dict[str, set[str]]] = {}
        self.family: dict[str, str] = {}  # sample name -> family (no _total, _bucket...)
        self.families: set[str] = set()
        for family in text_string_to_metric_families(text):
            self.families.add(family.name)
            for sample in family.samples:
                self.family[sample.name] = family.name
                seen = self.labels.setdefault(sample.name, {})
                for label, value in sample.labels.items():
                    seen.setdefault(label, set()).add(value)

    def problems(self, expr: str) -> list[str]:
        """Every way ``expr`` asks for something this exposition does not have."""
        found: list[str] = []
        for name in NAME.findall(expr):
            if name not in self.labels:
                found.append(f"no series named {name}")
        for name, matchers in selectors(expr):
            for label, op, value in matchers:
                found += self._matcher(name, label, op, value)
        for labels, inner in aggregations(expr):
            for name in NAME.findall(inner):
                for label in set(labels) - TARGET_LABELS - set(self.labels.get(name, {})):
                    found.append(f"{name} has no label {label!r} to aggregate by")
        for name, label in LABEL_VALUES.findall(expr):
            if label not in TARGET_LABELS and label not in self.labels.get(name, {}):
                found.append(f"label_values: {name} has no label {label!r}")
        return found

    def _matcher(self, name: str, label: str, op: str, value: str) -> list[str]:
        if label in TARGET_LABELS or name not in self.labels:
            return []
        known = self.labels[name].get(label)
        if known is None:
            return [f"{name} has no label {label!r}"]
        if value.startswith("$"):  # a Grafana variable, filled from label_values
            return []
        alternatives = value.split("|") if op in ("=~", "!~") else [value]
        where = f"{name}{{{label}{op}{value!r}}}"
        return [
            f"{where}: no exported value matches {alt!r} (have {sorted(known)})"
            for alt in alternatives
            if not any(re.fullmatch(alt, v) for v in known)
        ]


TOKEN = "monitoring-test-token"
LEGACY_BODY = b'{"ok": true, "label": "billing"}'
AGENT_BODY = b'{"ok": true, "label": "refund"}'
CHAT_TOKENS = 42 + 17  # what each chat answer below reports


def chat_answer(answer_id: str, usage: bool = True) -> bytes:
    """An OpenAI Chat Completions answer with two tool calls, one with arguments
    that are not JSON; only its id varies between calls (noise to learn)."""
    calls = [("lookup_order", '{"order": 7}'), ("refund", '{"amount": ')]
    doc: dict[str, Any] = {
        "id": answer_id,
        "object": "chat.completion",
        "model": "fake-model-1",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": f"call_{i}", "function": {"name": name, "arguments": arguments}}
                        for i, (name, arguments) in enumerate(calls)
                    ],
                },
            }
        ],
    }
    if usage:
        doc["usage"] = {"prompt_tokens": 42, "completion_tokens": 17, "total_tokens": CHAT_TOKENS}
    return json.dumps(doc).encode()


def proxy_config(legacy: Fake, agent: Fake) -> dict[str, Any]:
    return {
        "backends": {
            "legacy": {"url": legacy.url},
            "agent": {"url": agent.url, "timeout": "2s"},
        },
        "reload_interval": "50ms",
        "routes": [
            {
                "name": "mirror",
                "match": {"prefix": "/mirror/"},
                "max_body_size": "1KiB",
                "shadow": {"enabled": True, "rate_limit": 1},
            },
            {
                "name": "api",
                "match": {"prefix": "/api/"},
                "rollout": {"mode": "manual", "percent": 100, "interval": "100ms"},
                "retries": {"attempts": 2, "backoff": "10ms"},
                "agent": {"format": "openai_chat"},
            },
            {
                # Each mirrored request costs two agent answers (the second one
                # learns noise): the budget lets three through, then drops.
                "name": "chat",
                "match": {"prefix": "/chat/"},
                "shadow": {"enabled": True, "token_budget": 5 * CHAT_TOKENS},
                "agent": {"format": "openai_chat"},
                "noise": {"enabled": True, "percent": 100, "backend": "agent", "min_pairs": 1},
            },
        ],
    }


async def eventually(check: Any, what: str, tries: int = 200) -> None:
    """Poll ``check`` every 50 ms until it holds (a scrape, as Prometheus would)."""
    for _ in range(tries):
        if await check():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out waiting until {what}")


@pytest.fixture
async def exposition(aiohttp_client: Any, legacy: Fake, agent: Fake, tmp_path: Path) -> Exposition:
    """A real proxy (config file, live app, admin app, rollout controller, config
    watcher) driven through every path the alerts and panels look at; then its
    /metrics, read over HTTP from the admin listener."""
    legacy.body, agent.body = LEGACY_BODY, AGENT_BODY  # they disagree on $.label
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(proxy_config(legacy, agent)))
    settings = load_settings(path)
    metrics = build_metrics(settings)
    core = Core(settings, metrics, path)
    proxy: TestClient[Any, Any] = await aiohttp_client(
        create_app(settings, metrics, Health(), core)
    )
    admin: TestClient[Any, Any] = await aiohttp_client(
        create_admin_app(metrics, Health(), core.controller, TOKEN)
    )

    async def get(path: str, **kwargs: Any) -> int:
        async with proxy.request(kwargs.pop("method", "GET"), path, **kwargs) as response:
            await response.read()
            return response.status

    async def settle() -> None:
        async with asyncio.timeout(5):
            await proxy.app[TASKS].join()

    async def scrape() -> Exposition:
        async with admin.get("/metrics") as response:
            assert response.status == 200
            return Exposition(await response.text())

    # The agent's live path: a 503 retried then served; a 500 falls back
    # (status); two dropped connections fall back (error) with upstream errors.
    # Each parallel legacy call is compared: mismatches on $.label.
    agent.script = [
        Reply(status=503),
        Reply(),
        Reply(status=500),
        Reply(drop=True),
        Reply(drop=True),
    ]
    for _ in range(3):
        assert await get("/api/x") == 200
    await settle()
    assert agent.script == []
    # The shadow path: one mirrored and compared, the next over the rate limit;
    # a body over the route's limit is refused.
    assert await get("/mirror/x") == 200
    assert await get("/mirror/x") == 200
    assert await get("/mirror/x", method="POST", data=b"x" * 2048) == 413
    await settle()

    async def published() -> bool:
        series = (await scrape()).labels
        return (
            "shadow_proxy_rollout_gate_value" in series and "shadow_proxy_circuit_state" in series
        )

    # The agent's cost: mirrored chat answers with usage and tool calls, each
    # agent answer with its own id (noise, learned from the second calls and then
    # discounted), until the route's token budget drops the rest.
    legacy.body = chat_answer("legacy")
    agent.script = [Reply(body=chat_answer(f"agent-{i}")) for i in range(12)]
    for _ in range(5):
        assert await get("/chat/x") == 200
        await settle()
    agent.script = []
    # A live agent answer that reports no usage.
    agent.body = chat_answer("agent-live", usage=False)
    assert await get("/api/x") == 200
    await settle()

    await eventually(published, "the controller publishes gates and breaker state")
    async with admin.post(
        "/rollout/api/rollback", headers={"Authorization": f"Bearer {TOKEN}"}
    ) as response:
        assert response.status == 200, await response.text()
    path.write_text("routes: [this is not a config\n")

    async def rejected() -> bool:
        series = (await scrape()).labels
        return "shadow_proxy_config_reloads_total" in series

    await eventually(rejected, "the watcher rejects the broken config file")
    return await scrape()


async def test_every_series_the_alerts_and_dashboard_query_is_exported(
    exposition: Exposition,
) -> None:
    dashboard = load_dashboard()
    queries = {
        **{f"alert {name}": r["expr"] for name, r in alert_rules(rule_groups()).items()},
        **{f"dashboard: {e}": e for e in dashboard_exprs(dashboard)},
        **{f"variable {n}": q for n, q in variable_queries(dashboard).items()},
    }
    problems = {where: p for where, expr in queries.items() if (p := exposition.problems(expr))}
    assert problems == {}
    # And the other way round: every family the proxy exports is on the dashboard
    # or in an alert. (`*_created` series are off in production: Metrics.for_process.)
    used = {exposition.family[n] for expr in queries.values() for n in NAME.findall(expr)}
    exported = {f for f in exposition.families if NAME.match(f)}
    assert used == {f for f in exported if not f.endswith("_created")}


def test_the_name_check_can_fail() -> None:
    """The check above on a made-up exposition: a typo in a name, a label, a
    label value or a `by` clause is each caught."""
    text = (
        "# TYPE shadow_proxy_comparisons_total counter\n"
        'shadow_proxy_comparisons_total{route="api",verdict="match"} 1.0\n'
        'shadow_proxy_comparisons_total{route="api",verdict="mismatch"} 1.0\n'
    )
    exposition = Exposition(text)
    ok = (
        "sum by (namespace, route) (rate(shadow_proxy_comparisons_total"
        '{verdict=~"match|mismatch", route=~"$route"}[5m]))'
    )
    assert exposition.problems(ok) == []
    for bad in (
        "rate(shadow_proxy_comparison_total[5m])",
        'shadow_proxy_comparisons_total{verdicts="match"}',
        'shadow_proxy_comparisons_total{verdict=~"match|mismach"}',
        'shadow_proxy_comparisons_total{verdict!="skiped"}',
        "sum by (backend) (shadow_proxy_comparisons_total)",
    ):
        assert exposition.problems(bad), bad
