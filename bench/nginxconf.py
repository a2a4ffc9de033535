"""The parts every nginx config of the harness shares: one worker, no access
log, every path inside the run's own directory, a request counter.

nginx is started in the foreground as ``nginx -p DIR -c CONF -e stderr -g
'daemon off;'``, so it never touches /etc/nginx or /var/log/nginx.
"""

from __future__ import annotations

import shutil
from pathlib import Path

ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")
STATUS_PATH = "/__bench_status"


def nginx_binary() -> str:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found is None:
        raise FileNotFoundError("nginx not found: run `bash scripts/system-deps.sh`")
    return found


def argv(prefix: Path, conf: Path) -> list[str]:
    return [nginx_binary(), "-p", str(prefix), "-c", str(conf), "-e", "stderr", "-g", "daemon off;"]


def main_conf(prefix: Path, http_body: str, *, echo: bool = False, log_level: str = "error") -> str:
    """A whole nginx.conf around ``http_body`` (the servers and upstreams)."""
    for temp in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / "temp" / temp).mkdir(parents=True, exist_ok=True)
    load = f"load_module {ECHO_MODULE};\n" if echo else ""
    return f"""{load}worker_processes 1;
pid {prefix}/nginx.pid;
error_log stderr {log_level};
events {{ worker_connections 16384; }}
http {{
    access_log off;
    default_type application/json;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    client_body_temp_path {prefix}/temp/body;
    proxy_temp_path {prefix}/temp/proxy;
    fastcgi_temp_path {prefix}/temp/fastcgi;
    uwsgi_temp_path {prefix}/temp/uwsgi;
    scgi_temp_path {prefix}/temp/scgi;
{http_body}
}}
"""


def status_location() -> str:
    """stub_status: ``requests`` counts every request the server read (its own too)."""
    return f"        location = {STATUS_PATH} {{ stub_status; }}\n"


def parse_requests(stub_status: str) -> int:
    """The total request count from a stub_status page.

    ``Active connections: 1 / server accepts handled requests / 7 7 9 / Reading: ...``
    """
    lines = stub_status.splitlines()
    return int(lines[2].split()[2])
