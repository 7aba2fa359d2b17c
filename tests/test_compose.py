"""docker-compose.yml and the Dockerfile describe a deployment that can work: no engine runs
here, so the files are read and checked against the repository and the settings."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

import pytest
import yaml

from service.config import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
APP_SERVICES = ("web", "worker")
SECRETS = ("BROADSIDE_SECRET_KEY", "BROADSIDE_SMTP_URL", "BROADSIDE_ADMIN_TOKEN")
# ${NAME:?message}: compose refuses to start while NAME is unset or empty.
REQUIRED_VARIABLE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+):\?[^}]+\}")
VARIABLE = re.compile(r"\$\{[^}]+\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"][name]
    return found


def command_line(spec: dict[str, Any]) -> str:
    """The command as a shell would read it: the script of `sh -c SCRIPT`, else the words."""
    command = spec["command"]
    if isinstance(command, str):
        return command
    if command[:2] == ["sh", "-c"]:
        return str(command[2])
    return shlex.join(command)


def database_url(compose: dict[str, Any]) -> SplitResult:
    """The web's database URL with each ${…} reference made a plain word, so it parses."""
    url = service(compose, "web")["environment"]["BROADSIDE_DATABASE_URL"]
    return urlsplit(VARIABLE.sub("VARIABLE", url))


def test_compose_runs_postgres_web_and_worker(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) >= {"postgres", "web", "worker"}
    assert all(spec.get("restart") == "unless-stopped" for spec in compose["services"].values())


def test_web_and_worker_share_one_production_environment(compose: dict[str, Any]) -> None:
    web, worker = (service(compose, name)["environment"] for name in APP_SERVICES)
    assert web == worker and web["BROADSIDE_ENV"] == "production"

    database = database_url(compose)
    postgres = service(compose, "postgres")["environment"]
    assert database.scheme == "postgresql" and database.hostname == "postgres"
    assert database.username == postgres["POSTGRES_USER"]
    assert database.path == f"/{postgres['POSTGRES_DB']}"


def test_secrets_come_from_required_variables(compose: dict[str, Any]) -> None:
    environment = service(compose, "web")["environment"]
    for name in SECRETS:
        match = REQUIRED_VARIABLE.fullmatch(environment[name])
        assert match and match["name"] == name, f"{name} must be ${{{name}:?…}}"

    postgres_password = service(compose, "postgres")["environment"]["POSTGRES_PASSWORD"]
    assert REQUIRED_VARIABLE.fullmatch(postgres_password)
    assert f":{postgres_password}@" in environment["BROADSIDE_DATABASE_URL"]


def test_every_broadside_variable_is_a_real_setting() -> None:
    used = set(re.findall(r"\bBROADSIDE_[A-Z0-9_]+", COMPOSE_FILE.read_text()))
    assert used
    unknown = {n for n in used if n.removeprefix("BROADSIDE_").lower() not in Settings.model_fields}
    assert not unknown, f"not settings of service.config.Settings: {sorted(unknown)}"


def test_postgres_is_healthchecked_and_keeps_its_data(compose: dict[str, Any]) -> None:
    postgres = service(compose, "postgres")
    assert postgres["image"].startswith("postgres:16")
    assert "pg_isready" in json.dumps(postgres["healthcheck"]["test"])
    named = [v.split(":")[0] for v in postgres["volumes"] if not v.startswith((".", "/"))]
    assert named and set(named) <= set(compose.get("volumes") or {})


def test_app_services_wait_for_a_healthy_database(compose: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        depends = service(compose, name)["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy", name
    assert "web" in service(compose, "worker")["depends_on"]  # web migrates first


def test_web_migrates_then_serves_without_the_scheduler(compose: dict[str, Any]) -> None:
    web = service(compose, "web")
    command = command_line(web)
    assert "broadside db upgrade && " in command
    serve = shlex.split(command.split("&& ", 1)[1].removeprefix("exec "))
    assert serve[:2] == ["broadside", "serve"] and "--no-scheduler" in serve
    assert (
        serve[serve.index("--host") + 1] == "0.0.0.0" and serve[serve.index("--port") + 1] == "8000"
    )
    assert any(str(port).endswith(":8000") for port in web["ports"])
    assert "/healthz" in json.dumps(web["healthcheck"]["test"])


def test_worker_runs_the_scheduler_without_a_web_server(compose: dict[str, Any]) -> None:
    worker = service(compose, "worker")
    assert command_line(worker) == "broadside worker"
    assert "ports" not in worker


def test_columns_folder_is_mounted_where_the_settings_look(compose: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        spec = service(compose, name)
        mount = f"./columns:{spec['environment']['BROADSIDE_COLUMNS_DIR']}:ro"
        assert mount in spec["volumes"], name


def test_every_build_has_a_dockerfile(compose: dict[str, Any]) -> None:
    builds = [spec["build"] for spec in compose["services"].values() if "build" in spec]
    assert builds
    for build in builds:
        context = build if isinstance(build, str) else build.get("context", ".")
        dockerfile = (
            "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        )
        assert (ROOT / context / dockerfile).is_file(), build


def dockerfile_copy_sources(dockerfile: Path) -> list[str]:
    """The local paths each COPY/ADD takes from the build context (not from other stages)."""
    sources: list[str] = []
    text = dockerfile.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        words = line.split(maxsplit=1)
        if len(words) < 2 or words[0].upper() not in ("COPY", "ADD"):
            continue
        args = json.loads(words[1]) if words[1].lstrip().startswith("[") else shlex.split(words[1])
        if any(arg.startswith("--from=") for arg in args):
            continue
        sources += [arg for arg in args if not arg.startswith("--")][:-1]
    return sources


def test_dockerfile_copies_only_what_the_repository_has() -> None:
    sources = dockerfile_copy_sources(ROOT / "Dockerfile")
    assert "service/" in sources and "templates/" in sources and "migrations/" in sources
    missing = [s for s in sources if not (ROOT / s).exists()]
    assert not missing, f"COPY sources missing from the repository: {missing}"
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert not [s for s in sources if s.rstrip("/") in ignored], ".dockerignore hides a COPY source"
