"""The peers, each configured as a competent user would, one worker each:
nginx with ``mirror``, Envoy with ``request_mirror_policies``, and
shadow-proxy; plus shadow-proxy with ``--workers N`` (several processes on
one port), and ``direct`` (no proxy at all) as the baseline.

Each scenario starts its peers afresh (so peak RSS is per scenario) and
stops them by PID when it ends, whatever happens.
"""

from __future__ import annotations

import json
import re
import sys
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench import nginxconf
from bench.procs import LOOPBACK, Proc, free_port

SHADOW_PROXY = "shadow-proxy"
SHADOW_PROXY_WORKERS = "shadow-proxy-workers"  # run --workers N (N from the harness)
ENVOY = "envoy"
NGINX = "nginx"
DIRECT = "direct"
PEERS = (SHADOW_PROXY, SHADOW_PROXY_WORKERS, ENVOY, NGINX)
SHADOW_PROXIES = (SHADOW_PROXY, SHADOW_PROXY_WORKERS)
SHADOW_TIMEOUT = 5  # seconds for one mirrored exchange, the same for every peer
_SHADOW_SAMPLE = re.compile(r"^shadow_proxy_shadow_requests_total\{([^}]*)\} (\S+)$", re.M)


@dataclass(frozen=True)
class Setup:
    """What a scenario asks of every peer."""

    legacy: str  # URL
    agent: str | None  # URL; None: no mirror
    compare: tuple[str, ...] = ("status", "json")


@dataclass(frozen=True)
class Peer:
    name: str
    port: int
    proc: Proc | None  # None: direct, no proxy process
    admin_port: int | None = None  # shadow-proxy's metrics

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def shadow_outcomes(self) -> dict[str, float]:
        """shadow-proxy's own count of shadow requests by outcome (sent,
        dropped_inflight, skipped_breaker, ...), all routes; empty for others."""
        if self.admin_port is None:
            return {}
        url = f"http://{LOOPBACK}:{self.admin_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        counts: dict[str, float] = {}
        for match in _SHADOW_SAMPLE.finditer(text):
            outcome = re.search(r'outcome="([^"]+)"', match[1])
            if outcome:
                counts[outcome[1]] = counts.get(outcome[1], 0.0) + float(match[2])
        return counts


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _hostport(url: str) -> str:
    return url.removeprefix("http://")


def nginx_conf(prefix: Path, port: int, setup: Setup) -> str:
    proxy = """            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffers 16 64k;
            proxy_busy_buffers_size 128k;"""
    mirror = "            mirror /mirror;\n" if setup.agent else ""
    agent = ""
    if setup.agent:
        agent = f"""    upstream agent {{ server {_hostport(setup.agent)}; keepalive 64; }}
"""
        mirror_location = f"""        location = /mirror {{
            internal;
            proxy_pass http://agent$request_uri;
            proxy_set_header X-Shadow-Request 1;
            proxy_connect_timeout {SHADOW_TIMEOUT}s;
            proxy_read_timeout {SHADOW_TIMEOUT}s;
{proxy}
        }}
"""
    else:
        mirror_location = ""
    body = f"""    upstream legacy {{ server {_hostport(setup.legacy)}; keepalive 64; }}
{agent}    server {{
        listen {LOOPBACK}:{port} backlog=4096;
        mirror_request_body on;
        location /sse {{
{mirror}            proxy_pass http://legacy;
            proxy_buffering off;
{proxy}
        }}
        location / {{
{mirror}            proxy_pass http://legacy;
{proxy}
        }}
{mirror_location}    }}"""
    # crit: an agent refusing connections must not cost a log line per request
    return nginxconf.main_conf(prefix, body, log_level="crit")


def _cluster(name: str, url: str) -> dict[str, object]:
    host, port = _hostport(url).rsplit(":", 1)
    address = {"socket_address": {"address": host, "port_value": int(port)}}
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }


def envoy_conf(port: int, setup: Setup) -> dict[str, object]:
    route: dict[str, object] = {"cluster": "legacy", "timeout": "30s"}
    clusters = [_cluster("legacy", setup.legacy)]
    if setup.agent:
        route["request_mirror_policies"] = [
            {
                "cluster": "agent",
                "runtime_fraction": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}},
            }
        ]
        clusters.append(_cluster("agent", setup.agent))
    manager = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network."
        "http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "bench",
        "codec_type": "AUTO",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": route}],
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    address = {"socket_address": {"address": LOOPBACK, "port_value": port}}
    listener = {
        "name": "main",
        "address": address,
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ]
            }
        ],
    }
    return {"static_resources": {"listeners": [listener], "clusters": clusters}}


def shadow_proxy_conf(port: int, admin: int, setup: Setup) -> dict[str, object]:
    backends: dict[str, object] = {"legacy": {"url": setup.legacy}}
    route: dict[str, object] = {"name": "all", "match": {"prefix": "/"}}
    if setup.agent:
        backends["agent"] = {"url": setup.agent}
        route["shadow"] = {"enabled": True, "percent": 100}
        route["compare"] = list(setup.compare)
    return {
        "listen": {"host": LOOPBACK, "port": port},
        "admin": {"host": LOOPBACK, "port": admin},
        "backends": backends,
        "shadow": {"timeout": f"{SHADOW_TIMEOUT}s"},
        "routes": [route],
        "logging": {"level": "warning", "format": "json"},
    }


def start_peer(stack: ExitStack, root: Path, name: str, setup: Setup, workers: int = 2) -> Peer:
    prefix = root / name
    prefix.mkdir(parents=True, exist_ok=True)
    port = free_port()
    if name == NGINX:
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_conf(prefix, port, setup))
        argv = nginxconf.argv(prefix, conf)
    elif name == ENVOY:
        conf = prefix / "envoy.json"
        conf.write_text(json.dumps(envoy_conf(port, setup), indent=1))
        argv = [
            _bin("envoy"),
            "-c",
            str(conf),
            "--concurrency",
            "1",
            "-l",
            "error",
            "--disable-hot-restart",
        ]
    elif name in SHADOW_PROXIES:
        admin = free_port()
        conf = prefix / "proxy.yaml"
        conf.write_text(yaml.safe_dump(shadow_proxy_conf(port, admin, setup)))
        argv = [_bin("shadow-proxy"), "run", "--config", str(conf)]
        if name == SHADOW_PROXY_WORKERS:
            argv += ["--workers", str(workers)]
    else:
        raise ValueError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")
    proc = Proc(name, argv, prefix / "out.log", prefix)
    stack.callback(proc.stop)
    proc.wait_port(port)
    return Peer(name, port, proc, admin if name in SHADOW_PROXIES else None)


@contextmanager
def running_peers(
    root: Path, names: Sequence[str], setup: Setup, direct_port: int | None, workers: int = 2
) -> Iterator[list[Peer]]:
    """The named peers (and ``direct`` when ``direct_port`` is given), stopped
    by PID when the block ends."""
    with ExitStack() as stack:
        peers = [start_peer(stack, root, name, setup, workers) for name in names]
        if direct_port is not None:
            peers.append(Peer(DIRECT, direct_port, None))
        yield peers
