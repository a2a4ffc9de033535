"""Secrets planted in every position never reach a log line.

The proxy runs as users run it (the CLI, JSON logs at debug level). Requests
and both backends' answers carry secrets in headers, the query string, JSON
fields and free text; the agent disagrees on every one of them, so each
differing value is a candidate for the mismatch log. Stdout and stderr are
then searched for every secret.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from fakes import Fake, RawClient, Reply
from test_cli import CLI, start_cli

pytestmark = pytest.mark.e2e

# Shapes the default rules know; each value is unique so a leak names its position.
CARD_LEGACY, CARD_AGENT = "4111 1111 1111 1111", "5500-0000-0000-0004"
SECRETS = {
    "request_authorization": "Bearer reqauth0000secret0001",
    "request_cookie": "sid=reqcookie0000secret0002",
    "request_api_key": "reqkey0000secret0003",
    "query_api_key": "qkey0000secret0004",
    "query_token": "qtok0000secret0005",
    "body_password": "bodypass0000secret0006",
    "legacy_password": "legpass0000secret0007",
    "agent_password": "agtpass0000secret0008",
    "legacy_token": "legtok0000secret0009",
    "agent_token": "agttok0000secret0010",
    "legacy_email": "legacy.person0011@example.com",
    "agent_email": "agent.person0012@example.org",
    "legacy_bearer": "Bearer legbearer0000secret0013",
    "agent_key": "sk-agentkey0000secret0014xyz",
    "legacy_cookie": "sid=legcookie0000secret0015",
    "agent_cookie": "sid=agtcookie0000secret0016",
    "legacy_card": CARD_LEGACY,
    "agent_card": CARD_AGENT,
    "legacy_text_token": "txtleg0000secret0017",
    "agent_text_email": "txt.agent0018@example.net",
    "custom_field": "customfield0000secret0019",
    "custom_pattern": "ACME-0000-secret-0020",
    "malformed_line": "Bearer malformed0000secret0022",
}


def document(side: str) -> bytes:
    s = SECRETS
    return json.dumps(
        {
            "user": {
                "email": s[f"{side}_email"],
                "password": s[f"{side}_password"],
                "card": CARD_LEGACY if side == "legacy" else CARD_AGENT,
                "note": f"call with {s['legacy_bearer']}"
                if side == "legacy"
                else f"use {s['agent_key']}",
                "pin_code": s["custom_field"] if side == "legacy" else "0000",
                "ref": s["custom_pattern"] if side == "agent" else "none",
            },
            "token": s[f"{side}_token"],
            "summary": f"token={s['legacy_text_token']}"
            if side == "legacy"
            else f"mail {s['agent_text_email']}",
        }
    ).encode()


def config(legacy: Fake, agent: Fake) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0},
        "admin": {"port": 0},
        "backends": {"legacy": {"url": legacy.url}, "agent": {"url": agent.url}},
        "routes": [
            {
                "name": "api",
                "match": {"prefix": "/api/"},
                "side_effect_free": True,
                "shadow": {"enabled": True},
                "compare": [
                    "status",
                    {"name": "headers", "names": ["Set-Cookie", "Content-Type"]},
                    {"name": "json", "max_differences": 100},
                    {"name": "text", "path": "$.summary", "threshold": 0.99},
                ],
            },
        ],
        "logging": {"format": "json", "level": "debug", "max_differences": 100},
        "redaction": {"fields": ["pin_code"], "patterns": [r"ACME-\d{4}-secret-\d{4}"]},
    }


async def test_no_secret_reaches_any_log_line(legacy: Fake, agent: Fake, tmp_path: Path) -> None:
    legacy.body = document("legacy")
    legacy.script = [Reply(headers={"Set-Cookie": SECRETS["legacy_cookie"]}) for _ in range(3)]
    agent.body = document("agent")
    agent.script = [Reply(headers={"Set-Cookie": SECRETS["agent_cookie"]}) for _ in range(3)]
    proc = await start_cli(config(legacy, agent), tmp_path, stderr=asyncio.subprocess.PIPE)
    reader = asyncio.create_task(proc.read_events())
    assert proc.process.stderr is not None
    stderr = asyncio.create_task(proc.process.stderr.read())
    s = SECRETS
    headers = {
        "Authorization": s["request_authorization"],
        "Cookie": s["request_cookie"],
        "X-Api-Key": s["request_api_key"],
    }
    query = f"?api_key={s['query_api_key']}&token={s['query_token']}&page=1"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                async with http.post(
                    f"{proc.proxy}/api/profile{query}",
                    json={"password": s["body_password"]},
                    headers=headers,
                ) as response:
                    assert response.status == 200
                    assert await response.read() == legacy.body  # the client's answer is intact
            # Unparseable: aiohttp's parser quotes the bad line in its message.
            port = int(proc.proxy.rsplit(":", 1)[1])
            async with RawClient.connect(port) as raw:
                header = f"Authorization: {s['malformed_line']}\x01{'z' * 4000}"
                await raw.send(f"GET / HTTP/1.1\r\n{header}\r\n\r\n".encode())
                assert (await raw.response()).status == 400
            for _ in range(100):  # the three mismatches are logged
                if sum(e["event"] == "mismatch" for e in proc.events) >= 3:
                    break
                await asyncio.sleep(0.05)
    finally:
        proc.process.terminate()
        await asyncio.wait_for(proc.process.wait(), timeout=15)
        await reader
    assert (await stderr).decode() == ""  # every line, aiohttp's included, goes through the log

    (malformed,) = [e for e in proc.events if e["event"] == "malformed_request"]
    assert malformed["level"] == "info" and len(malformed["reason"]) < 400  # bounded
    mismatches = [e for e in proc.events if e["event"] == "mismatch"]
    assert len(mismatches) == 3
    differences = {d["path"]: d for d in mismatches[0]["differences"]}
    # The evidence is still there — which fields differ — only the values are masked.
    for path in ("$.user.password", "$.token", "headers.set-cookie", "$.user.pin_code"):
        assert differences[path]["legacy"] == differences[path]["agent"] == "[REDACTED]", path
    assert differences["$.user.note"]["kind"] == "changed"
    assert "page=1" in mismatches[0]["path"]

    text = "\n".join(json.dumps(e) for e in proc.events)
    assert "[REDACTED]" in text
    leaked = {where: v for where, v in SECRETS.items() if v in text or v.split()[-1] in text}
    assert leaked == {}


def test_check_config_rejects_credentials_in_a_backend_url_without_echoing_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / "proxy.yaml"
    secret = "urlpass0000secret0021"
    path.write_text(yaml.safe_dump({"backends": {"legacy": {"url": f"http://u:{secret}@h:1"}}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOW_PROXY_")}
    result = subprocess.run(
        [CLI, "check-config", str(path)], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 2
    assert "backends.legacy.url: must not carry credentials" in result.stderr
    assert secret not in result.stderr + result.stdout
