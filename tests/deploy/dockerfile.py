"""A Dockerfile's build, replayed on the host (no Docker engine runs here).

Each stage gets a directory standing in for its root filesystem; COPY takes
files from the build context as .dockerignore filters it; the commands of the
RUN instructions run as written, with container paths mapped into that
directory and ``python`` being this interpreter. A RUN or instruction the
replay does not know fails the test rather than being skipped, so the
Dockerfile and what the tests check cannot drift apart.
"""

from __future__ import annotations

import glob
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
HADOLINT = Path(sys.executable).parent / "hadolint"

# The python base image's PATH, before the Dockerfile's ENV.
BASE_PATH = "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
# The only paths the container may write (the chart mounts volumes there).
WRITABLE = ("/tmp", "/var/lib/shadow-proxy")
# RUN commands that set up identity and ownership: not replayable on the host;
# test_the_dockerfile_runs_the_way_the_helm_chart_expects checks their words.
IDENTITY_COMMANDS = {"groupadd", "useradd", "chown"}


# --- Reading the Dockerfile -------------------------------------------------


@dataclass
class Instruction:
    line: int
    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        assert self.args.startswith("["), f"Dockerfile:{self.line}: {self.keyword} not exec form"
        words: list[str] = json.loads(self.args)
        return words

    def flags(self) -> tuple[list[tuple[str, str]], str]:
        """Leading ``--name=value`` flags, and the rest."""
        flags: list[tuple[str, str]] = []
        rest = self.args
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            name, _, value = flag[2:].partition("=")
            flags.append((name, value))
            rest = rest.lstrip()
        return flags, rest


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"stage {self.name} has no {keyword}"
        return found[-1]


def parse_dockerfile(text: str) -> list[Stage]:
    """Stages and their instructions; comment lines and continuations as Docker reads them."""
    stages: list[Stage] = []
    logical, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not logical:
            start = number
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        keyword, _, args = (logical + line).partition(" ")
        logical = ""
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else str(len(stages))
            stages.append(Stage(words[0], name))
        else:
            assert stages, f"Dockerfile:{start}: {keyword} before FROM"
            stages[-1].instructions.append(Instruction(start, keyword, args))
    return stages


_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def shell_commands(
    instruction: Instruction, script: str, args: dict[str, str | None] | None = None
) -> list[list[str]]:
    """A RUN script as its ``&&``-joined commands; anything fancier is refused.
    ``$NAME`` / ``${NAME}`` is replaced where NAME is one of the stage's ``args``
    (its ARGs so far: unset is empty, as the shell has it); any other ``$`` is refused."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    known = args or {}
    for word in lexer:
        names = [a or b for a, b in _VARIABLE.findall(word)]
        if word == "&&":
            commands.append([])
        elif set(word) <= set("();<>|&") or not set(names) <= set(known):
            pytest.fail(f"Dockerfile:{instruction.line}: {word!r}: keep RUN to plain && chains")
        else:
            value = _VARIABLE.sub(lambda m: known[m[1] or m[2]] or "", word)
            if "$" in value:
                pytest.fail(f"Dockerfile:{instruction.line}: {word!r}: keep RUN to plain && chains")
            commands[-1].append(value)
    return [c for c in commands if c]


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus ``**``) as a regex."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


class DockerIgnore:
    """Docker's rule: the last pattern that matches a path or any of its parents decides."""

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            keep = line.startswith("!")
            pattern = posixpath.normpath(line.lstrip("!").strip()).lstrip("/")
            self.rules.append((not keep, _glob_regex(pattern)))

    def excluded(self, relative: str) -> bool:
        parts = relative.split("/")
        candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        result = False
        for exclude, regex in self.rules:
            if any(regex.fullmatch(c) for c in candidates):
                result = exclude
        return result


# --- Replaying the build ----------------------------------------------------


@dataclass
class Rootfs:
    """A stage's root filesystem: container paths under a host directory."""

    top: Path

    def host(self, path: str) -> Path:
        assert posixpath.isabs(path), path
        return self.top / posixpath.normpath(path).lstrip("/")

    def map_word(self, word: str) -> str:
        if word.startswith("/"):
            return str(self.host(word))
        name, eq, value = word.partition("=")
        if eq and name.startswith("--") and value.startswith("/"):
            return f"{name}={self.host(value)}"
        return word


@dataclass
class Image:
    fs: Rootfs
    env: dict[str, str]
    workdir: str
    entrypoint: list[str]
    cmd: list[str]
    expose: set[int]
    ran: list[list[str]]  # every replayed command, all stages, as run on the host

    def host_env(self, **extra: str) -> dict[str, str]:
        """The container's environment and nothing of the host's: PATH inside the rootfs."""
        env = dict(self.env)
        env["PATH"] = ":".join(str(self.fs.host(p)) for p in env["PATH"].split(":"))
        env["HOME"] = str(self.fs.host(WRITABLE[1]))
        return {**env, **extra}

    def which(self, program: str) -> Path:
        found = shutil.which(program, path=self.host_env()["PATH"])
        assert found, f"{program} is not on the image's PATH"
        assert Path(found).is_relative_to(self.fs.top), found
        return Path(found)

    def command(self) -> list[str]:
        """ENTRYPOINT + CMD, resolved on the image's PATH, container paths mapped."""
        program, *args = self.entrypoint + self.cmd
        return [str(self.which(program)), *(self.fs.map_word(a) for a in args)]


def run_host(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    if result.returncode != 0:
        pytest.fail(f"{shlex.join(argv)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return result


def _copy(instruction: Instruction, fs: Rootfs, workdir: str, ignore: DockerIgnore) -> None:
    flags, rest = instruction.flags()
    if flags:
        pytest.fail(f"Dockerfile:{instruction.line}: COPY flags {flags} are not replayed")
    *sources, dest = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
    target = posixpath.join(workdir, dest)
    into_dir = dest.endswith("/") or len(sources) > 1
    for source in sources:
        origin = ROOT / source
        assert not any(c in source for c in "*?["), f"Dockerfile:{instruction.line}: no globs"
        assert origin.exists(), f"Dockerfile:{instruction.line}: {source} does not exist"
        if origin.is_file():
            relative = posixpath.normpath(source)
            assert not ignore.excluded(relative), f"{source} is excluded by .dockerignore"
            files = [(origin, posixpath.join(target, origin.name) if into_dir else target)]
        else:
            files = []
            for path in sorted(p for p in origin.rglob("*") if p.is_file()):
                if not ignore.excluded(path.relative_to(ROOT).as_posix()):
                    inside = path.relative_to(origin).as_posix()
                    files.append((path, posixpath.join(target, inside)))
            assert files, f"Dockerfile:{instruction.line}: .dockerignore leaves {source} empty"
        for path, container_path in files:
            host = fs.host(container_path)
            host.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, host)


def _expand(words: Iterable[str]) -> list[str]:
    """Glob words as the shell would (no match: the word as it is)."""
    out: list[str] = []
    for word in words:
        matches = sorted(glob.glob(word)) if any(c in word for c in "*?[") else []
        out.extend(matches or [word])
    return out


def _run_env(stage_env: dict[str, str], argv: list[str]) -> dict[str, str]:
    """The host's environment (its pip index stands in for the build's network access)
    plus the stage's ENV. A command with --no-index gets no pip settings at all, so
    only the Dockerfile's own flags decide where it installs from."""
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env = {k: v for k, v in env.items() if not k.startswith("SHADOW_PROXY_")}
    if "--no-index" in argv:
        env = {k: v for k, v in env.items() if not k.startswith("PIP_")}
        env["PIP_CONFIG_FILE"] = os.devnull
    env.update((k, v) for k, v in stage_env.items() if k != "PATH")
    return env


def _run(
    instruction: Instruction,
    fs: Rootfs,
    workdir: str,
    env: dict[str, str],
    built: dict[str, Rootfs],
    args: dict[str, str | None],
) -> list[list[str]]:
    flags, script = instruction.flags()
    mounts: list[Path] = []
    ran: list[list[str]] = []
    try:
        for name, value in flags:
            options = dict(o.partition("=")[::2] for o in value.split(","))
            if name != "mount" or options.get("type") != "bind" or "from" not in options:
                pytest.fail(f"Dockerfile:{instruction.line}: RUN --{name}={value} not replayed")
            link = fs.host(options["target"])
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(built[options["from"]].host(options.get("source", "/")))
            mounts.append(link)
        # A RUN sees the stage's ARGs that have a value as environment variables.
        env = {**{k: v for k, v in args.items() if v is not None}, **env}
        for words in shell_commands(instruction, script, args):
            program, *args = words
            if program in IDENTITY_COMMANDS:
                continue
            if program not in ("python", "mkdir"):
                pytest.fail(f"Dockerfile:{instruction.line}: the replay cannot run {program!r}")
            host_program = sys.executable if program == "python" else program
            argv = [host_program, *_expand(fs.map_word(a) for a in args)]
            run_host(argv, cwd=fs.host(workdir), env=_run_env(env, argv), timeout=240)
            ran.append(argv)
    finally:
        for link in mounts:  # a bind mount leaves nothing behind in the layer
            link.unlink()
    return ran


def _expand_vars(value: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m[1], ""), value)


def build(stages: list[Stage], top: Path, build_args: dict[str, str] | None = None) -> Image:
    """Replay every stage; return the last one as an image. ``build_args`` are
    `docker build --build-arg NAME=value`: they override an ARG's default."""
    ignore = DockerIgnore(DOCKERIGNORE.read_text())
    built: dict[str, Rootfs] = {}
    ran: list[list[str]] = []
    image: Image | None = None
    for index, stage in enumerate(stages):
        base_minor = re.match(r"python:(3\.\d+)", stage.base)
        assert base_minor, f"base image {stage.base} is not a python image"
        here = f"{sys.version_info.major}.{sys.version_info.minor}"
        assert base_minor[1] == here, f"the replay runs Python {here}, the image {stage.base}"
        fs = Rootfs(top / f"{index}-{stage.name}")
        fs.top.mkdir()
        image = Image(fs, {"PATH": BASE_PATH}, "/", [], [], set(), [])
        args: dict[str, str | None] = {}  # an ARG is in scope from its line to the stage's end
        for ins in stage.instructions:
            if ins.keyword == "WORKDIR":
                image.workdir = posixpath.join(image.workdir, ins.args)
                fs.host(image.workdir).mkdir(parents=True, exist_ok=True)
            elif ins.keyword == "ENV":
                for word in shlex.split(ins.args):
                    name, eq, value = word.partition("=")
                    assert eq, f"Dockerfile:{ins.line}: ENV takes NAME=value"
                    image.env[name] = _expand_vars(value, image.env)
            elif ins.keyword == "COPY":
                _copy(ins, fs, image.workdir, ignore)
            elif ins.keyword == "ARG":
                name, eq, default = ins.args.partition("=")
                assert re.fullmatch(r"\w+", name), f"Dockerfile:{ins.line}: ARG NAME[=default]"
                given = (build_args or {}).get(name)
                args[name] = given if given is not None else (default if eq else None)
            elif ins.keyword == "RUN":
                image.ran += _run(ins, fs, image.workdir, image.env, built, args)
            elif ins.keyword == "ENTRYPOINT":
                image.entrypoint = ins.exec_form()
            elif ins.keyword == "CMD":
                image.cmd = ins.exec_form()
            elif ins.keyword == "EXPOSE":
                image.expose |= {int(port.split("/")[0]) for port in ins.args.split()}
            elif ins.keyword not in ("LABEL", "STOPSIGNAL", "USER"):  # checked by parsing
                pytest.fail(f"Dockerfile:{ins.line}: {ins.keyword} is not replayed by this test")
        built[stage.name] = built[str(index)] = fs
        ran += image.ran
    assert image is not None, "the Dockerfile has no stage"
    image.ran = ran
    return image
