"""The container image, proven without a Docker engine.

No Docker engine exists where the tests run, so the Dockerfile's build is
replayed on the host. Each stage gets a directory standing in for its root
filesystem; COPY takes files from the build context as .dockerignore filters
it; the commands of the RUN instructions run as written, with container paths
mapped into that directory and ``python`` being this interpreter (the same
minor version as the base image). A RUN the replay does not know fails the
test rather than being skipped, so the Dockerfile and what is tested here
cannot drift apart. The runtime stage's result — a fresh venv holding the
project's wheel and its dependencies, and the default config — is then
started with the image's ENV, WORKDIR, ENTRYPOINT and CMD.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import posixpath
import re
import shlex
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from chart import STANDALONE, manifests, merged, one, proxy_config
from dockerfile import (
    DOCKERFILE,
    DOCKERIGNORE,
    HADOLINT,
    ROOT,
    WRITABLE,
    DockerIgnore,
    Image,
    Instruction,
    Rootfs,
    build,
    parse_dockerfile,
    run_host,
    shell_commands,
)
from fakes import Fake


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Image:
    return build(parse_dockerfile(DOCKERFILE.read_text()), tmp_path_factory.mktemp("image"))


def snapshot(fs: Rootfs) -> dict[str, tuple[int, int]]:
    """Every file outside the writable paths: size and mtime."""
    skip = {fs.host(p) for p in WRITABLE}
    files: dict[str, tuple[int, int]] = {}
    for top, dirs, names in os.walk(fs.top):
        dirs[:] = [d for d in dirs if Path(top, d) not in skip]
        for name in names:
            stat = Path(top, name).lstat()
            files[str(Path(top, name))] = (stat.st_size, stat.st_mtime_ns)
    return files


# --- The tests ----------------------------------------------------------------


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    # An explicit, empty config: a stray .hadolint.yaml cannot ignore rules.
    config = tmp_path / "hadolint.yaml"
    config.write_text("ignored: []\n")
    result = subprocess.run(
        [str(HADOLINT), "--config", str(config), "--format", "json",
         "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert json.loads(result.stdout) == [], result.stdout
    assert result.returncode == 0, result.stderr
    # Inline ignores are allowed only with a comment above saying why.
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore" in line:
            reason = lines[number - 1].strip() if number else ""
            assert reason.startswith("#") and "hadolint" not in reason, f"line {number + 1}"


def test_dockerignore_sends_only_what_the_build_needs() -> None:
    ignore = DockerIgnore(DOCKERIGNORE.read_text())
    left_out = [
        ".git/config", ".venv/bin/python", ".venv/lib/python3.11/site-packages/x.py",
        "tests/conftest.py", "helm/shadow-proxy/values.yaml", "scripts/system-deps.sh",
        ".ci/run", "Makefile", ".mypy_cache/3.11/x.json", ".hypothesis/examples/x",
        "proxy/__pycache__/cli.cpython-311.pyc", "comparators/__pycache__/x.pyc",
        "shadow_proxy.egg-info/PKG-INFO", "build/lib/proxy/cli.py", "dist/x.whl",
        "config/schema.json", "secrets.env",
    ]  # fmt: skip
    sent = [
        "pyproject.toml", "README.md", "proxy/cli.py", "proxy/py.typed",
        "proxy/demo/runner.py", "proxy/demo/demo.yaml", "comparators/__init__.py",
        "config/proxy.yaml",
    ]  # fmt: skip
    assert [p for p in left_out if not ignore.excluded(p)] == []
    assert [p for p in sent if ignore.excluded(p)] == []


def test_the_dockerfile_runs_the_way_the_helm_chart_expects() -> None:
    runtime = parse_dockerfile(DOCKERFILE.read_text())[-1]
    docs = manifests(STANDALONE)
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "shadow-proxy")

    uid, gid = runtime.last("USER").args.split(":")
    assert (int(uid), int(gid)) == (
        container["securityContext"]["runAsUser"],
        container["securityContext"]["runAsGroup"],
    )
    assert pod["securityContext"]["fsGroup"] == int(gid)  # the state volume is writable
    assert runtime.last("ENTRYPOINT").exec_form() == ["shadow-proxy"]
    cmd = runtime.last("CMD").exec_form()
    assert cmd == container["args"] == ["run", "--config", "/etc/shadow-proxy/proxy.yaml"]
    exposed = {int(p) for i in runtime.all("EXPOSE") for p in i.args.split()}
    assert exposed == {p["containerPort"] for p in container["ports"]} == {8080, 9090}
    assert runtime.last("STOPSIGNAL").args == "SIGTERM"

    # Read-only root: the chart mounts volumes exactly where the image may write,
    # and its config over the image's default.
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for path in WRITABLE:
        assert path in mounts and not mounts[path].get("readOnly"), path
    assert posixpath.dirname(cmd[-1]) in mounts
    assert proxy_config(docs)["state_file"].startswith(WRITABLE[1] + "/")
    env = " ".join(i.args for i in runtime.all("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env.split()
    assert "PYTHONUNBUFFERED=1" in env.split()

    # The user exists with that uid/gid and owns the state directory.
    setup = [c for i in runtime.all("RUN") for c in shell_commands(i, i.flags()[1])]
    useradd = next(c for c in setup if c[0] == "useradd")
    assert useradd[useradd.index("--uid") + 1] == uid
    assert useradd[useradd.index("--gid") + 1] == gid
    assert ["chown", f"{uid}:{gid}", WRITABLE[1]] in setup


def test_both_stages_are_pinned_and_the_runtime_has_no_build_tools_or_source() -> None:
    stages = parse_dockerfile(DOCKERFILE.read_text())
    assert len(stages) >= 2, "multi-stage: wheels are built apart from the runtime"
    for stage in stages:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", stage.base)
    runtime = stages[-1]
    words = [w for i in runtime.all("RUN") for c in shell_commands(i, i.flags()[1]) for w in c]
    assert not {"apt-get", "apt", "gcc", "make", "build-essential"} & set(words)
    # From the context the runtime takes only the default config, and the wheels
    # arrive through a bind mount, never a COPY that would keep them in a layer.
    for copy in runtime.all("COPY"):
        flags, rest = copy.flags()
        assert not flags, f"Dockerfile:{copy.line}: COPY {flags} into the runtime"
        assert shlex.split(rest)[:-1] == ["config/proxy.yaml"], f"Dockerfile:{copy.line}"


@pytest.mark.timeout(300)
def test_the_wheel_installs_into_a_fresh_venv_apart_from_the_source_tree(image: Image) -> None:
    commands = [" ".join(argv) for argv in image.ran]
    assert any(" -m pip wheel " in c for c in commands), commands
    assert any(" -m venv " in c for c in commands), commands
    assert any(" install " in c and "--no-index" in c for c in commands), commands
    assert not image.fs.host("/wheels").exists(), "the wheels stay out of the runtime"

    python = image.which("python")  # the venv's, first on the image's PATH
    probe = (
        "import importlib.metadata, importlib.util, json, sys, proxy, comparators\n"
        "print(json.dumps({'prefix': sys.prefix, 'path': sys.path,\n"
        "    'modules': [proxy.__file__, comparators.__file__],\n"
        "    'tools': [m for m in ('pip', 'setuptools') if importlib.util.find_spec(m)],\n"
        "    'readme': importlib.metadata.metadata('shadow-proxy').get_payload()}))"
    )
    cwd = image.fs.host(image.workdir)
    result = run_host([str(python), "-c", probe], cwd=cwd, env=image.host_env(), timeout=60)
    info = json.loads(result.stdout)
    venv = Path(info["prefix"])
    assert venv.is_relative_to(image.fs.top), venv
    for module in info["modules"]:
        assert Path(module).is_relative_to(venv / "lib"), module
    assert not [p for p in info["path"] if p and Path(p).is_relative_to(ROOT)]
    assert info["tools"] == [], "the runtime venv has no pip or setuptools"
    assert info["readme"].startswith("# shadow-proxy"), "README.md is the long description"


@pytest.mark.timeout(300)
def test_the_image_default_config_passes_check_config(image: Image) -> None:
    config = image.cmd[image.cmd.index("--config") + 1]
    assert image.fs.host(config).read_bytes() == (ROOT / "config" / "proxy.yaml").read_bytes()
    program = image.which(image.entrypoint[0])
    result = run_host(
        [str(program), "check-config", str(image.fs.host(config))],
        cwd=image.fs.host(image.workdir), env=image.host_env(), timeout=60,
    )  # fmt: skip
    normalized = yaml.safe_load(result.stdout)
    assert normalized["listen"]["host"] == "0.0.0.0"
    assert {normalized["listen"]["port"], normalized["admin"]["port"]} == image.expose


@pytest.mark.parametrize(
    ("script", "args", "words"),
    [
        ('pip wheel ".[${EXTRAS}]"', {"EXTRAS": "otel"}, ["pip", "wheel", ".[otel]"]),
        ("pip wheel .[$EXTRAS]", {"EXTRAS": "otel,semantic"}, ["pip", "wheel", ".[otel,semantic]"]),
        ('echo "${UNSET}x"', {"UNSET": None}, ["echo", "x"]),  # an ARG with no value: empty
    ],
)
def test_the_replay_expands_the_stages_build_args(
    script: str, args: dict[str, str | None], words: list[str]
) -> None:
    assert shell_commands(Instruction(1, "RUN", script), script, args) == [words]


@pytest.mark.parametrize("script", ['pip wheel ".[${EXTRAS}]"', "echo $HOME", "a | b"])
def test_the_replay_refuses_what_it_cannot_run_faithfully(script: str) -> None:
    with pytest.raises(pytest.fail.Exception, match="keep RUN to plain && chains"):
        shell_commands(Instruction(1, "RUN", script), script, {"OTHER": "x"})


@pytest.mark.timeout(120)
def test_the_default_image_can_export_spans_and_leaves_pytorch_out(
    image: Image, tmp_path: Path
) -> None:
    """EXTRAS defaults to otel: the chart's tracing (and recording) config passes
    check-config inside the image; the semantic extra's PyTorch is not there."""
    python = image.which("python")
    probe = (
        "import importlib.util, json\n"
        "names = ('opentelemetry.sdk', 'opentelemetry.exporter.otlp.proto.http', 'torch',\n"
        "         'sentence_transformers')\n"
        "print(json.dumps({n: importlib.util.find_spec(n) is not None for n in names}))"
    )
    cwd = image.fs.host(image.workdir)
    found = json.loads(run_host([str(python), "-c", probe], cwd=cwd, env=image.host_env()).stdout)
    assert found == {
        "opentelemetry.sdk": True,
        "opentelemetry.exporter.otlp.proto.http": True,
        "torch": False,
        "sentence_transformers": False,
    }
    values = merged(
        STANDALONE,
        tracing={"otlpEndpoint": "http://otel-collector:4318"},
        recording={"enabled": True},
    )
    config = tmp_path / "proxy.yaml"
    config.write_text(yaml.safe_dump(proxy_config(manifests(values))))
    program = image.which(image.entrypoint[0])
    result = run_host(
        [str(program), "check-config", str(config)], cwd=cwd, env=image.host_env(), timeout=60
    )
    normalized = yaml.safe_load(result.stdout)
    assert normalized["tracing"]["otlp_endpoint"] == "http://otel-collector:4318"
    assert normalized["recording"]["directory"] == "/var/lib/shadow-proxy/recordings"


@pytest.mark.timeout(120)
def test_the_image_runs_the_demo(image: Image) -> None:
    """`docker run IMAGE demo`: the demo's configs ship inside the package."""
    program = image.which(image.entrypoint[0])
    result = run_host(
        [str(program), "demo", "--duration", "4", "--interval", "2", "--port", "0",
         "--admin-port", "0", "--scenario", "good"],
        cwd=image.fs.host(image.workdir), env=image.host_env(), timeout=90,
    )  # fmt: skip
    assert "final totals" in result.stdout, result.stdout[-2000:]


@dataclass
class Running:
    process: asyncio.subprocess.Process
    proxy: str
    admin: str
    events: list[dict[str, Any]]


@contextlib.asynccontextmanager
async def run_image(image: Image, **overrides: str) -> AsyncIterator[Running]:
    """The image's ENTRYPOINT + CMD, as the container would start it."""
    process = await asyncio.create_subprocess_exec(
        *image.command(),
        cwd=image.fs.host(image.workdir),
        env=image.host_env(**overrides),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    stderr = asyncio.create_task(process.stderr.read())
    events: list[dict[str, Any]] = []

    async def read_events() -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            events.append(json.loads(line))

    reader = asyncio.create_task(read_events())
    try:
        for _ in range(300):
            if any(e["event"] == "listening" for e in events) or reader.done():
                break
            await asyncio.sleep(0.1)
        listening = [e for e in events if e["event"] == "listening"]
        if not listening:
            await asyncio.wait_for(process.wait(), timeout=5)
            pytest.fail(f"no 'listening' event; stderr:\n{(await stderr).decode()[-3000:]}")
        yield Running(process, listening[0]["proxy"], listening[0]["admin"], events)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await reader
        errors = (await stderr).decode()
        assert "Traceback" not in errors, errors


@pytest.mark.timeout(300)
async def test_the_image_proxies_answers_health_and_drains_on_sigterm(
    image: Image, legacy: Fake, agent: Fake
) -> None:
    before = await asyncio.to_thread(snapshot, image.fs)
    # The image's own config, pointed at the fakes the way the chart overrides it.
    overrides = {
        "SHADOW_PROXY_LISTEN__HOST": "127.0.0.1",
        "SHADOW_PROXY_LISTEN__PORT": "0",
        "SHADOW_PROXY_ADMIN__PORT": "0",
        "SHADOW_PROXY_BACKENDS__LEGACY__URL": legacy.url,
        "SHADOW_PROXY_BACKENDS__AGENT__URL": agent.url,
        "SHADOW_PROXY_LOGGING__FORMAT": "json",
    }
    async with run_image(image, **overrides) as running, aiohttp.ClientSession() as http:
        async with http.post(
            f"{running.proxy}/api/classify",
            json={"text": "I was charged twice"},
            headers={"X-User-Id": "u-1"},
        ) as response:
            assert response.status == 200
            assert await response.json() == {"ok": True}
        assert [(s.method, s.path_qs) for s in legacy.seen] == [("POST", "/api/classify")]
        async with http.get(f"{running.admin}/healthz") as health:
            assert health.status == 200
        # The default config's shadow settings are the ones in force.
        await asyncio.wait_for(agent.arrived.wait(), timeout=5)  # the shadow copy
        assert agent.seen and agent.seen[0].headers["x-shadow-source"] == ["shadow-proxy"]

        running.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(running.process.wait(), timeout=30) == 0
    assert [e["event"] for e in running.events][-1] == "stopped"
    # Nothing was written outside the writable paths (no .pyc, no state, no cache).
    assert await asyncio.to_thread(snapshot, image.fs) == before
