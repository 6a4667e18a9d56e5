"""The Dockerfile and .dockerignore, checked without a Docker engine: what the image is
built from, what it runs and as whom, its health check (run for real against stub
servers), its dependency layer, and what the build context lets in."""

from __future__ import annotations

import http.server
import os
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator

import pytest
import typer.main
from typer.testing import CliRunner

from mqctl.cli import app
from tests.integration.deployment import ROOT, Stage, read_dockerfile, read_dockerignore
from tests.servers import free_port

pytestmark = pytest.mark.timeout(60)

PINNED_PYTHON = re.compile(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?")
INSTALLERS = ("apt-get install", "apt install", "pip install", "gcc", "build-essential", "curl", "wget")


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return read_dockerfile()


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def mqctl_commands() -> list[str]:
    """The subcommands the Typer app registers."""
    group = typer.main.get_command(app)
    return sorted(group.commands)  # type: ignore[attr-defined]


def test_every_stage_starts_from_a_pinned_slim_python(stages: list[Stage]) -> None:
    """Each FROM names python:3.11.<patch>-slim-bookworm: a full version, never a moving tag."""
    assert stages, "the Dockerfile has no FROM"
    for stage in stages:
        assert PINNED_PYTHON.fullmatch(stage.base), f"{stage.base!r} is not a pinned slim Python image"
    assert len({stage.base for stage in stages}) == 1, "the stages use different bases"


def test_final_stage_runs_as_a_non_root_user(final: Stage) -> None:
    """The image's last USER is neither root nor uid 0, and the final stage creates it."""
    user = final.last("USER")
    assert user is not None, "no USER in the final stage: the container would run as root"
    name, _, group = user.value.partition(":")
    assert name not in ("root", "0") and group not in ("root", "0"), user.value
    created = " ".join(run.value for run in final.all("RUN"))
    assert re.search(rf"useradd\b.*(--uid {name}\b|\b{name}$)", created), f"no useradd creates user {name!r}"


def test_entrypoint_is_the_mqctl_command(final: Stage) -> None:
    """ENTRYPOINT is ["mqctl"], the console script pyproject.toml declares, on the image's PATH."""
    entrypoint = final.last("ENTRYPOINT")
    assert entrypoint is not None and entrypoint.exec_form() == ["mqctl"]
    with (ROOT / "pyproject.toml").open("rb") as f:
        assert "mqctl" in tomllib.load(f)["project"]["scripts"]
    venvs = [copy.options()[1].split()[-1] for copy in final.all("COPY") if "from" in copy.options()[0]]
    path = final.env()["PATH"].split(":")
    assert any(f"{venv}/bin" in path for venv in venvs), f"PATH {path} does not hold the copied venv {venvs}"


def test_default_command_is_a_real_mqctl_command(final: Stage) -> None:
    """CMD (exec form) names a registered subcommand with options it accepts, on all interfaces."""
    cmd = final.last("CMD")
    assert cmd is not None
    argv = cmd.exec_form()
    assert argv, "CMD must be a JSON array (exec form)"
    assert argv[0] in mqctl_commands(), f"{argv[0]!r} is not one of {mqctl_commands()}"
    result = CliRunner().invoke(app, [*argv, "--help"])
    assert result.exit_code == 0, result.output
    assert "0.0.0.0" in argv, "a service in a container must bind 0.0.0.0 to be reachable"


class _Stub(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stub_server() -> Iterator[type[_Stub]]:
    """A local HTTP server whose /health answers ``handler.status``."""
    handler = type("Handler", (_Stub,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler.port = server.server_address[1]  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler
    server.shutdown()
    server.server_close()
    thread.join(5)


def run_healthcheck(final: Stage, url: str) -> int:
    """Run the image's HEALTHCHECK command here (``python`` is this interpreter) against ``url``."""
    healthcheck = final.last("HEALTHCHECK")
    assert healthcheck is not None
    _, argv = healthcheck.healthcheck()
    assert argv is not None and argv[0] == "python"
    env = {**os.environ, "HEALTHCHECK_URL": url}
    return subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, timeout=20, check=False).returncode


def test_healthcheck_asks_health_with_python_alone(final: Stage) -> None:
    """HEALTHCHECK is exec-form Python with urllib (a slim image has no curl), aimed at /health."""
    healthcheck = final.last("HEALTHCHECK")
    assert healthcheck is not None, "no HEALTHCHECK in the final stage"
    flags, argv = healthcheck.healthcheck()
    assert argv is not None and argv[:2] == ["python", "-c"]
    assert "urllib" in argv[2] and not any(tool in argv[2] for tool in ("curl", "wget"))
    assert {"interval", "timeout", "retries"} <= set(flags)
    assert final.env()["HEALTHCHECK_URL"].endswith(":8002/health"), "the default should be Service A's /health"


def test_healthcheck_passes_only_when_health_answers_ok(final: Stage, stub_server: type[_Stub]) -> None:
    """The health check exits 0 on a 200, non-zero on a 503 or when nothing listens."""
    url = f"http://127.0.0.1:{stub_server.port}/health"  # type: ignore[attr-defined]
    assert run_healthcheck(final, url) == 0
    stub_server.status = 503
    assert run_healthcheck(final, url) != 0
    assert run_healthcheck(final, f"http://127.0.0.1:{free_port()}/health") != 0


def test_dependencies_install_from_the_lock_in_a_layer_of_their_own(stages: list[Stage]) -> None:
    """Only the runtime lock is copied before the dependencies install, with its hashes required;
    the code comes after, and mqctl itself is built without fetching anything unlocked."""
    steps = stages[0].instructions
    installs = [i for i, step in enumerate(steps) if step.keyword == "RUN" and "--require-hashes" in step.value]
    assert len(installs) == 1, "expected one RUN that installs the locked dependencies with --require-hashes"
    sources = [(i, step.options()[1].split()) for i, step in enumerate(steps) if step.keyword == "COPY"]
    before = [src for i, src in sources if i < installs[0]]
    assert len(before) == 1 and before[0][0] == "requirements/main.txt", f"copied before the install: {before}"
    words = shlex.split(steps[installs[0]].value)
    assert words[words.index("--requirement") + 1] == before[0][-1].rsplit("/", 1)[-1]
    assert any("mqctl" in src for i, src in sources if i > installs[0]), "the code is not copied after them"
    builds = [step.value for step in steps if step.keyword == "RUN" and "install --no-deps" in step.value]
    assert len(builds) == 1 and "--no-build-isolation" in builds[0], builds


def test_final_image_holds_no_build_tools_or_caches(stages: list[Stage], final: Stage) -> None:
    """The final stage installs nothing and copies only the built venv from the build stage,
    which keeps no pip cache and gives the venv no pip of its own."""
    assert len(stages) >= 2, "expected a multi-stage build"
    for run in final.all("RUN"):
        assert not any(tool in run.value for tool in INSTALLERS), f"line {run.line}: {run.value}"
    for copy in final.all("COPY"):
        assert copy.options()[0].get("from") == stages[0].name, f"line {copy.line}: copies from the build context"
    build = stages[0]
    assert build.env().get("PIP_NO_CACHE_DIR") == "1"
    assert any("--without-pip" in run.value for run in build.all("RUN"))


def test_dockerignore_keeps_tests_caches_and_git_out() -> None:
    """The build context has the code, pyproject.toml and README.md, and no tests, caches or .git."""
    excluded = read_dockerignore()
    for path in (
        ".git/HEAD",
        "tests/integration/test_dockerfile.py",
        "mqctl/__pycache__/cli.cpython-311.pyc",
        ".pytest_cache/v/cache/nodeids",
        ".ruff_cache/CACHEDIR.TAG",
        ".mypy_cache/3.11/mqctl/cli.meta.json",
        ".hypothesis/examples/x",
        ".coverage",
        ".venv/bin/python",
        "bench/results/run.json",
        "call_flow.png",
    ):
        assert excluded(path), f"{path} would be sent to the Docker build"
    needed = ["pyproject.toml", "README.md"] + [
        str(p.relative_to(ROOT)) for p in (ROOT / "mqctl").rglob("*") if p.is_file() and "__pycache__" not in p.parts
    ]
    assert "mqctl/services/delivery/viewer.html" in needed
    for path in needed:
        assert not excluded(path), f"{path} is needed by the build but excluded"
