"""`pip install .` gives a copy that runs from any directory: the wheel carries templates/ and
migrations/ inside the package, and the installed copy migrates, serves pages and mails."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from service.mail.listener import listen
from tests.helpers import eventually, links
from tests.processes import environment
from tests.smtp_server import SmtpTestServer
from tests.web.live import base_url_of

ROOT = Path(__file__).resolve().parent.parent
# What `pip install .` reads; the Dockerfile's build stage copies the same.
SOURCES = ("pyproject.toml", "README.md", "service", "templates", "migrations")
DATA = ("templates", "migrations")


def repository_files(folder: str) -> set[str]:
    """The files under ROOT/folder as paths from ROOT, bytecode caches left out."""
    return {
        path.relative_to(ROOT).as_posix()
        for path in (ROOT / folder).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


def pip(*args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", *args, "--quiet"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `pip install .` builds, from a copy of the sources (no build/ in the checkout)."""
    source = tmp_path_factory.mktemp("source")
    caches = shutil.ignore_patterns("__pycache__")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=caches)
        else:
            shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    pip("wheel", "--no-deps", "--wheel-dir", str(out), str(source))
    (built,) = out.glob("broadside-*.whl")
    return built


def test_wheel_carries_templates_and_migrations_inside_the_package(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"service/{name}" for folder in DATA for name in repository_files(folder)}
    assert {"service/migrations/env.py", "service/templates/pages/base.html"} <= expected
    assert not expected - names, sorted(expected - names)
    # Nothing lands at the top of site-packages, where another project's `migrations` lives.
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"service"}


def test_wheel_carries_every_module_of_the_package(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = {name for name in repository_files("service") if name.endswith(".py")} - names
    assert not missing, f"list their packages in pyproject.toml's packages: {sorted(missing)}"


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.slow
def test_installed_copy_migrates_serves_and_mails_from_any_directory(
    wheel: Path, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    site, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    pip("install", "--no-deps", "--target", str(site), str(wheel))
    elsewhere.mkdir()
    env = environment(f"sqlite:///{tmp_path / 'broadside.db'}", tmp_path / "var", smtp_server.url)
    env["PYTHONPATH"] = str(site)  # the installed copy is imported, not the checkout

    def broadside(*args: str) -> list[str]:
        return [sys.executable, "-m", "service.cli", *args]

    found = subprocess.run(
        [sys.executable, "-c", "from service import config; print(config.TEMPLATES_DIR)"],
        env=env,
        cwd=elsewhere,
        capture_output=True,
        text=True,
        check=True,
    )
    assert Path(found.stdout.strip()) == site / "service" / "templates"
    upgrade = subprocess.run(
        broadside("db", "upgrade"), env=env, cwd=elsewhere, capture_output=True, text=True
    )
    assert upgrade.returncode == 0, upgrade.stderr

    # The socket is bound here and handed down (serve --fd), so its port cannot be taken.
    with (tmp_path / "serve.log").open("wb") as log, listen("127.0.0.1", 0) as sock:
        base = base_url_of(sock)
        server = subprocess.Popen(
            broadside("serve", "--fd", str(sock.fileno())),
            env=env,
            cwd=elsewhere,
            stdout=subprocess.DEVNULL,
            stderr=log,
            pass_fds=[sock.fileno()],
        )
    try:
        assert eventually(lambda: answers(f"{base}/healthz"), timeout=30, every=0.2)
        page = httpx.get(f"{base}/")
        assert page.status_code == 200 and "Subscribe" in page.text
        asked = httpx.post(f"{base}/api/v1/subscriptions", json={"email": "ada@example.com"})
        assert asked.status_code == 202
        (mail,) = smtp_server.wait_for(1, timeout=20)
        assert mail.rcpt_tos == ["ada@example.com"] and links(mail, "/confirm/")
    finally:
        server.terminate()
        server.wait(timeout=20)
