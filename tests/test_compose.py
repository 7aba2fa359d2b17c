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

from service.config import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
APP_SERVICES = ("migrate", "app", "worker")  # the services that run the image
LONG_RUNNING = ("postgres", "app", "worker", "mailpit")
SECRETS = ("BROADSIDE_SECRET_KEY", "BROADSIDE_ADMIN_TOKEN")
SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|_KEY\b")
# ${NAME:?message}: compose refuses to start while NAME is unset or empty.
REQUIRED_VARIABLE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+):\?[^}]+\}")
# Any ${NAME}, ${NAME:-default} or ${NAME:?message}.
VARIABLE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?::(?P<kind>[-?])(?P<word>[^}]*))?\}")
# What an operator's .env would hold for each required variable.
EXAMPLE_ENV = {
    "POSTGRES_PASSWORD": "s3cretpassw0rd",
    "BROADSIDE_SECRET_KEY": "an-operator-secret-key-long-enough",
    "BROADSIDE_BASE_URL": "https://news.example.com",
    "BROADSIDE_FROM_ADDRESS": "worldview@news.example.com",
    "BROADSIDE_ADMIN_TOKEN": "an-operator-admin-token",
    "BROADSIDE_SMTP_URL": "smtp://mailpit:1025",  # trying it out: every mail stays in Mailpit
}
# The relay is one of two variables, never both: SMTP_URL, or SMTP_URLS for several.
RELAY_VARIABLES = ("BROADSIDE_SMTP_URL", "BROADSIDE_SMTP_URLS")
ONE_RELAY_LESS = {k: v for k, v in EXAMPLE_ENV.items() if k not in RELAY_VARIABLES}
SEVERAL_RELAYS = "smtp://mx1.example:25;weight=3, smtps://u:pw@relay.example:465;per_hour=5000"


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


def interpolate(value: str, env: dict[str, str]) -> str:
    """The value as compose makes it: each ${…} from `env`, else its default."""

    def one(match: re.Match[str]) -> str:
        if match["name"] in env:
            return env[match["name"]]
        assert match["kind"] == "-", f"{match[0]} has no default and is not in the example .env"
        return match["word"]

    return VARIABLE.sub(one, value)


def written_urls(value: str) -> list[str]:
    """The URLs a value can become: itself with each ${…} made a plain word, and its defaults."""
    words = [VARIABLE.sub("VARIABLE", value)]
    words += [match["word"] for match in VARIABLE.finditer(value) if match["kind"] == "-"]
    return [word for word in words if "://" in word]


def database_url(compose: dict[str, Any]) -> SplitResult:
    """The app's database URL with each ${…} reference made a plain word, so it parses."""
    url = service(compose, "app")["environment"]["BROADSIDE_DATABASE_URL"]
    return urlsplit(VARIABLE.sub("VARIABLE", url))


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """The Dockerfile's (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    lines = [line for line in dockerfile.read_text().splitlines() if not line.startswith("#")]
    found = []
    for line in "\n".join(lines).replace("\\\n", " ").splitlines():
        words = line.split(maxsplit=1)
        if len(words) == 2:
            found.append((words[0].upper(), words[1]))
    return found


def arguments(dockerfile: Path, instruction: str) -> list[str]:
    return [args for name, args in instructions(dockerfile) if name == instruction]


def test_compose_runs_postgres_migrate_app_worker_and_mailpit(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) >= {"postgres", "migrate", "app", "worker", "mailpit"}
    assert all(service(compose, name).get("restart") == "unless-stopped" for name in LONG_RUNNING)
    assert service(compose, "migrate")["restart"] == "no"  # once per `up`, not in a loop


def test_app_and_worker_share_one_production_environment(compose: dict[str, Any]) -> None:
    migrate, app, worker = (service(compose, name)["environment"] for name in APP_SERVICES)
    assert migrate == app == worker and app["BROADSIDE_ENV"] == "production"
    # The rest of .env (DKIM, bounces, limits) reaches them too.
    assert all(service(compose, name)["env_file"][0]["path"] == ".env" for name in APP_SERVICES)

    database = database_url(compose)
    postgres = service(compose, "postgres")["environment"]
    assert database.scheme == "postgresql" and database.hostname == "postgres"
    assert database.username == postgres["POSTGRES_USER"]
    assert database.path == f"/{postgres['POSTGRES_DB']}"


def test_secrets_come_from_required_variables(compose: dict[str, Any]) -> None:
    environment = service(compose, "app")["environment"]
    for name in SECRETS:
        match = REQUIRED_VARIABLE.fullmatch(environment[name])
        assert match and match["name"] == name, f"{name} must be ${{{name}:?…}}"

    postgres_password = service(compose, "postgres")["environment"]["POSTGRES_PASSWORD"]
    assert REQUIRED_VARIABLE.fullmatch(postgres_password)
    assert f":{postgres_password}@" in environment["BROADSIDE_DATABASE_URL"]


def test_no_secret_is_written_into_the_files(compose: dict[str, Any]) -> None:
    for name, spec in compose["services"].items():
        for key, value in (spec.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert REQUIRED_VARIABLE.fullmatch(str(value)), f"{name}: {key} is written out"
            # A URL's password (the database's, a relay's) is a variable too, never a word,
            # and no default falls back to one.
            for url in written_urls(str(value)):
                assert urlsplit(url).password in (None, "VARIABLE"), f"{name}: {key}"
    for value in arguments(DOCKERFILE, "ENV") + arguments(DOCKERFILE, "ARG"):
        assert not SECRET_NAME.search(value), f"the image bakes in a secret: {value}"


def test_every_broadside_variable_is_a_real_setting() -> None:
    used = set(re.findall(r"\bBROADSIDE_[A-Z0-9_]+", COMPOSE_FILE.read_text()))
    assert used
    unknown = {n for n in used if n.removeprefix("BROADSIDE_").lower() not in Settings.model_fields}
    assert not unknown, f"not settings of service.config.Settings: {sorted(unknown)}"


def compose_settings(compose: dict[str, Any], env: dict[str, str]) -> Settings:
    """The settings the app container starts with when `.env` holds `env`."""
    environment = service(compose, "app")["environment"]
    values = {
        key.removeprefix("BROADSIDE_").lower(): interpolate(str(value), env)
        for key, value in environment.items()
        if key.startswith("BROADSIDE_")
    }
    return load_settings(_env_file=None, **values)


def test_the_service_accepts_the_compose_settings(compose: dict[str, Any]) -> None:
    settings = compose_settings(compose, EXAMPLE_ENV)
    assert settings.env == "production" and settings.trusted_proxies == ["172.16.0.0/12"]
    password = EXAMPLE_ENV["POSTGRES_PASSWORD"]
    assert settings.database_url.endswith(f"://broadside:{password}@postgres:5432/broadside")


def test_postgres_is_healthchecked_and_keeps_its_data(compose: dict[str, Any]) -> None:
    postgres = service(compose, "postgres")
    assert postgres["image"].startswith("postgres:16")
    assert "pg_isready" in json.dumps(postgres["healthcheck"]["test"])
    named = [v.split(":")[0] for v in postgres["volumes"] if not v.startswith((".", "/"))]
    assert named and set(named) <= set(compose.get("volumes") or {})


def test_migrations_run_once_before_app_and_worker_start(compose: dict[str, Any]) -> None:
    migrate = service(compose, "migrate")
    assert command_line(migrate) == "broadside db upgrade"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("app", "worker"):
        depends = service(compose, name)["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy", name
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert "db upgrade" not in command_line(service(compose, name)), name


def test_app_serves_without_the_scheduler_behind_a_healthcheck(compose: dict[str, Any]) -> None:
    app = service(compose, "app")
    serve = shlex.split(command_line(app))
    assert serve[:2] == ["broadside", "serve"] and "--no-scheduler" in serve
    assert (
        serve[serve.index("--host") + 1] == "0.0.0.0" and serve[serve.index("--port") + 1] == "8000"
    )
    # Published on loopback only: the proxy on the host is the one client from the network.
    assert app["ports"] == ["127.0.0.1:8000:8000"]
    assert "/healthz" in json.dumps(app["healthcheck"]["test"])


def test_worker_can_be_scaled(compose: dict[str, Any]) -> None:
    worker = service(compose, "worker")
    assert command_line(worker) == "broadside worker"
    # `--scale worker=3` needs generated names and no host port to fight over.
    assert "container_name" not in worker and "ports" not in worker
    # The image's healthcheck asks a web server the worker does not run.
    assert worker["healthcheck"] == {"disable": True}


def test_the_relay_is_a_choice_mailpit_or_real_never_a_silent_default(
    compose: dict[str, Any],
) -> None:
    mailpit = service(compose, "mailpit")
    assert mailpit["image"].startswith("axllent/mailpit")
    assert any(str(port).endswith(":8025") for port in mailpit["ports"])

    environment = service(compose, "app")["environment"]
    for name in RELAY_VARIABLES:
        match = VARIABLE.fullmatch(environment[name])
        # Passed through as written in .env, and empty (unset, for the service) when it is
        # not: never a relay of compose's choosing, least of all the development inbox.
        assert match is not None and match["name"] == name, name
        assert match["kind"] == "-" and match["word"] == "", f"{name} must be ${{{name}:-}}"
    relay = compose_settings(compose, EXAMPLE_ENV).relay
    assert relay is not None and (relay.host, relay.port, relay.username) == ("mailpit", 1025, None)


def test_compose_takes_several_relays_instead_of_one(compose: dict[str, Any]) -> None:
    env = {**ONE_RELAY_LESS, "BROADSIDE_SMTP_URLS": SEVERAL_RELAYS}
    settings = compose_settings(compose, env)
    assert settings.smtp_url is None
    assert [(r.url.label, r.weight, r.per_hour) for r in settings.relays] == [
        ("mx1.example:25", 3, None),
        ("relay.example:465", 1, 5000),
    ]


def test_compose_without_a_relay_stops_in_one_line_naming_both_choices(
    compose: dict[str, Any],
) -> None:
    # Compose cannot require one of two variables: the service refuses instead, at once
    # (migrate is the first to start, and app and worker wait for it to succeed).
    with pytest.raises(ConfigError) as refused:
        compose_settings(compose, ONE_RELAY_LESS)
    message = str(refused.value)
    assert message.startswith("BROADSIDE_SMTP_URL: ") and "\n" not in message
    assert "SMTP_URLS" in message and "production" in message


def test_compose_with_both_relay_variables_stops_in_one_line(compose: dict[str, Any]) -> None:
    env = {**EXAMPLE_ENV, "BROADSIDE_SMTP_URLS": SEVERAL_RELAYS}
    with pytest.raises(ConfigError, match=r"^BROADSIDE_SMTP_URLS: .*not both[^\n]*$"):
        compose_settings(compose, env)


def test_containers_never_share_a_prometheus_multiprocess_folder(compose: dict[str, Any]) -> None:
    # prometheus-client names its files by PID, and each container's main process is PID 1:
    # a folder shared between containers would mix their figures up.
    for name in ("app", "worker", "migrate"):
        assert "PROMETHEUS_MULTIPROC_DIR" not in service(compose, name)["environment"]


def test_columns_folder_is_mounted_where_the_settings_look(compose: dict[str, Any]) -> None:
    for name in ("app", "worker"):
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
    for name, rest in instructions(dockerfile):
        if name not in ("COPY", "ADD"):
            continue
        args = json.loads(rest) if rest.lstrip().startswith("[") else shlex.split(rest)
        if any(arg.startswith("--from=") for arg in args):
            continue
        sources += [arg for arg in args if not arg.startswith("--")][:-1]
    return sources


def test_dockerfile_copies_what_pip_install_needs_and_nothing_missing() -> None:
    sources = dockerfile_copy_sources(DOCKERFILE)
    assert {"pyproject.toml", "README.md", "service/", "templates/", "migrations/"} <= set(sources)
    missing = [s for s in sources if not (ROOT / s).exists()]
    assert not missing, f"COPY sources missing from the repository: {missing}"
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert not [s for s in sources if s.rstrip("/") in ignored], ".dockerignore hides a COPY source"
    assert {".venv", "var", ".git", ".env"} <= ignored


def image_user() -> str:
    """The uid the image's processes run as: the last USER, a number."""
    user = arguments(DOCKERFILE, "USER")[-1].split(":")[0]
    assert user.isdigit(), f"USER {user}: a fixed uid, so runAsNonRoot policies can check it"
    return user


def test_image_runs_as_a_fixed_unprivileged_user() -> None:
    user = image_user()
    assert int(user) >= 1000
    assert any(f"--uid {user}" in args for args in arguments(DOCKERFILE, "RUN"))


def test_image_installs_the_package_and_serves_on_8000_with_a_healthcheck() -> None:
    assert all(base.split()[0] == "python:3.11-slim" for base in arguments(DOCKERFILE, "FROM"))
    installs = [args for args in arguments(DOCKERFILE, "RUN") if "pip install" in args]
    assert installs and not [args for args in installs if " -e " in args or "--editable" in args]
    assert "PYTHONUNBUFFERED=1" in " ".join(arguments(DOCKERFILE, "ENV"))
    assert arguments(DOCKERFILE, "EXPOSE") == ["8000"]

    (healthcheck,) = arguments(DOCKERFILE, "HEALTHCHECK")
    assert "http://127.0.0.1:8000/healthz" in healthcheck and "curl" not in healthcheck
    (command,) = arguments(DOCKERFILE, "CMD")
    serve = json.loads(command)
    assert serve[:2] == ["broadside", "serve"] and serve[serve.index("--host") + 1] == "0.0.0.0"
