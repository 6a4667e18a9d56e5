"""Readers of the deployment files for tests that cannot run Docker: the Dockerfile's
instructions by stage, the ``.dockerignore`` rules, and docker-compose.yml."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_FILE = ROOT / "docker-compose.yml"


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, its continuation lines joined."""

    keyword: str
    value: str
    line: int

    def options(self) -> tuple[dict[str, str], str]:
        """The leading ``--name=value`` flags, and the rest of the value."""
        flags: dict[str, str] = {}
        rest = self.value
        while rest.startswith("--"):
            word, _, rest = rest.partition(" ")
            name, _, value = word[2:].partition("=")
            flags[name] = value
            rest = rest.lstrip()
        return flags, rest

    def exec_form(self, text: str | None = None) -> list[str] | None:
        """The JSON array form (``["a", "b"]``) of the value, or None for the shell form."""
        text = self.value if text is None else text
        if not text.startswith("["):
            return None
        parsed = json.loads(text)
        if not (isinstance(parsed, list) and all(isinstance(item, str) for item in parsed)):
            raise ValueError(f"Line {self.line}: {self.keyword} is not a JSON array of strings: {text!r}.")
        return parsed

    def healthcheck(self) -> tuple[dict[str, str], list[str] | None]:
        """For HEALTHCHECK: its flags and its command in exec form (None: shell form or NONE)."""
        flags, rest = self.options()
        kind, _, command = rest.partition(" ")
        return flags, self.exec_form(command.strip()) if kind == "CMD" else None

    def env(self) -> dict[str, str]:
        """For ENV: the ``NAME=value`` pairs it sets."""
        return dict(word.partition("=")[::2] for word in shlex.split(self.value))


@dataclass
class Stage:
    """One ``FROM`` and the instructions that follow it."""

    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for instruction in self.all("ENV"):
            merged.update(instruction.env())
        return merged


def read_dockerfile(path: Path = DOCKERFILE) -> list[Stage]:
    """The stages of a Dockerfile (comments dropped, ``ARG`` defaults substituted in ``FROM``)."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments may sit between continuation lines too
        if not pending:
            start = number
        pending.append(line[:-1].strip() if line.endswith("\\") else line)
        if not line.endswith("\\"):
            keyword, _, value = " ".join(pending).partition(" ")
            instructions.append(Instruction(keyword.upper(), value.strip(), start))
            pending = []
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "ARG" and not stages:
            name, _, default = instruction.value.partition("=")
            args[name] = default.strip('"')
        elif instruction.keyword == "FROM":
            words = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], ""), instruction.value).split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(words[0], name))
        elif stages:
            stages[-1].instructions.append(instruction)
    return stages


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A ``.dockerignore`` pattern as a regex: ``*`` and ``?`` stay within one path element,
    ``**`` spans any number of them, ``[...]`` is a character class."""
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


def read_dockerignore(path: Path = DOCKERIGNORE) -> Callable[[str], bool]:
    """``excluded(relative_path)`` under the file's rules, as Docker documents them: a
    pattern that matches a path or one of its parent folders decides, the last one wins,
    and ``!`` makes an exception."""
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        rules.append((negated, _pattern_regex(pattern)))

    def excluded(relative: str) -> bool:
        parts = relative.strip("/").split("/")
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        result = False
        for negated, regex in rules:
            if any(regex.fullmatch(prefix) for prefix in prefixes):
                result = not negated
        return result

    return excluded


def read_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    """docker-compose.yml as data (YAML anchors and ``<<`` merges resolved)."""
    with path.open(encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a mapping at the top level.")
    return data


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A compose service's ``environment``, in either of its two spellings, as a dict."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """``${VAR}`` and ``${VAR:-default}`` replaced as compose does, from ``env`` (default: none set)."""
    return _VARIABLE.sub(lambda m: (env or {}).get(m[1]) or m[2] or "", value)


def port_mappings(service: dict[str, Any]) -> dict[int, int]:
    """A compose service's ``ports`` as {container port: host port} (short syntax, defaults taken)."""
    mappings = {}
    for entry in service.get("ports") or []:
        published, _, target = interpolate(str(entry)).rpartition(":")
        mappings[int(target)] = int(published.rpartition(":")[2] or target)
    return mappings


def option(argv: list[str], name: str) -> str | None:
    """The value of ``name VALUE`` or ``name=VALUE`` in ``argv`` (the last one given)."""
    value = None
    for index, word in enumerate(argv):
        if word == name and index + 1 < len(argv):
            value = argv[index + 1]
        elif word.startswith(name + "="):
            value = word.partition("=")[2]
    return value
