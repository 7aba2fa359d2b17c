"""The `broadside` command as a real process: one-line errors, import, send, preview, status."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
import typer
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service import cli
from service.columns import sources
from service.db import transaction
from service.mail.listener import listen
from service.models import Delivery, Send, Subscriber, SubscriberStatus
from service.web import server
from tests import processes
from tests.conftest import SEED
from tests.daily import add_readers
from tests.helpers import body
from tests.smtp_server import SmtpTestServer


def broadside(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return processes.run(*args, env=env, timeout=timeout)


@pytest.fixture
def cli_env(database_url: str, tmp_path: Path, smtp_server: SmtpTestServer) -> dict[str, str]:
    (tmp_path / "columns").mkdir()
    return processes.environment(
        database_url, tmp_path / "var", smtp_server.url, columns_dir=tmp_path / "columns"
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BROADSIDE_TIMEZONE", "Nowhere/Nope"),
        ("BROADSIDE_SMTP_URL", "ftp://x"),
        ("BROADSIDE_SEND_TIME", "noon"),
    ],
)
def test_bad_setting_is_one_line_naming_the_variable(
    variable: str, value: str, cli_env: dict[str, str]
) -> None:
    assert_one_line_error(broadside("status", env={**cli_env, variable: value}), variable)


def test_production_without_secret_refuses_to_start(cli_env: dict[str, str]) -> None:
    env = {k: v for k, v in cli_env.items() if k != "BROADSIDE_SECRET_KEY"} | {
        "BROADSIDE_ENV": "production"
    }
    assert_one_line_error(broadside("serve", env=env), "BROADSIDE_SECRET_KEY")


def test_serve_answers_on_the_socket_it_was_handed(cli_env: dict[str, str], tmp_path: Path) -> None:
    # A service manager (systemd's socket activation) binds the port and hands it down.
    log = tmp_path / "serve.log"
    with processes.serving("--no-scheduler", env=cli_env, log=log) as url:
        assert httpx.get(f"{url}/healthz").json()["status"] == "ok"

    # The start-up line names the socket's address, not --host and --port's defaults.
    assert f"Broadside on {url}  (public URL" in log.read_text()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--port", "8001"], "--fd serves on a socket that is already bound"),
        (["--host", "0.0.0.0"], "leave out --host and --port"),
        ([], "--fd: file descriptor 99 is not an open socket (Bad file descriptor)"),
    ],
)
def test_serve_refuses_a_descriptor_it_cannot_serve_on(
    cli_env: dict[str, str], extra: list[str], needle: str
) -> None:
    assert_one_line_error(broadside("serve", "--fd", "99", *extra, env=cli_env), needle)


def test_only_a_listening_tcp_socket_is_taken_and_a_refused_one_is_left_open(
    tmp_path: Path,
) -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        socket.socket() as unbound,
        socket.socket(socket.AF_UNIX) as local,
        (tmp_path / "a-file").open("w") as file,
    ):
        local.bind(str(tmp_path / "sock"))
        local.listen()
        refused = {
            udp.fileno(): "is not a listening TCP socket",
            unbound.fileno(): "is not a listening TCP socket",
            local.fileno(): "is not a listening TCP socket",
            file.fileno(): "is not an open socket (Socket operation on non-socket)",
        }
        for fd, why in refused.items():
            with pytest.raises(ValueError, match=re.escape(f"file descriptor {fd} {why}")):
                server.inherited_socket(fd)
        file.write("still open")  # nothing it refused was closed: none of them was its own
        assert udp.getsockname() and unbound.fileno() == list(refused)[1]
    for fd in (-1, 2**32):  # 2**32 would be 0, standard input, to the C call
        with pytest.raises(ValueError, match=f"^{fd} is not a file descriptor$"):
            server.inherited_socket(fd)

    with listen("127.0.0.1", 0) as sock, server.inherited_socket(os.dup(sock.fileno())) as taken:
        assert taken.getsockname() == sock.getsockname()
    assert server.url("::1", 8000) == "http://[::1]:8000"


def test_unreachable_database_is_one_line(cli_env: dict[str, str]) -> None:
    env = cli_env | {"BROADSIDE_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
    assert_one_line_error(broadside("status", env=env), "database unreachable")


def test_a_statement_the_database_refused_is_not_called_unreachable(
    engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    # A deadlock or a timeout is the database answering: "unreachable" sent operators to
    # check a server that was up (a send stopped by a deadlock said so).
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite's errors carry no SQLSTATE")
    with pytest.raises(typer.Exit), cli.database_errors(), engine.connect() as conn:
        conn.execute(text("SET statement_timeout = '10ms'"))
        conn.execute(text("SELECT pg_sleep(1)"))
    printed = capsys.readouterr().err
    assert "database error (57014): canceling statement due to statement timeout" in printed
    assert "unreachable" not in printed


def test_import_reports_each_file(cli_env: dict[str, str], tmp_path: Path) -> None:
    good = tmp_path / "columns" / SEED.name
    good.write_text(SEED.read_text())
    undated = tmp_path / "columns" / "column-without-date.txt"
    undated.write_text("World View: Something\n\nA paragraph.\n")
    result = broadside("columns", "import", str(tmp_path / "columns"), env=cli_env)
    assert result.returncode == 1
    assert "created" in result.stdout and "2016-02-04" in result.stdout
    assert "column-without-date.txt: no date" in result.stderr and "Traceback" not in result.stderr
    again = broadside("columns", "import", str(good), env=cli_env)
    assert again.returncode == 0 and "unchanged" in again.stdout


def test_send_dry_run_then_send_then_status(
    cli_env: dict[str, str], engine: Engine, smtp_server: SmtpTestServer, tmp_path: Path
) -> None:
    (tmp_path / "columns" / SEED.name).write_text(SEED.read_text())
    add_readers(engine, active=3, pending=1)

    dry = broadside("send", "--date", "2016-02-04", "--dry-run", env=cli_env)
    assert dry.returncode == 0, dry.stderr
    assert "would go to 3 active readers" in dry.stdout
    assert smtp_server.received == []

    sent = broadside("send", "--date", "2016-02-04", env=cli_env)
    assert sent.returncode == 0, sent.stderr
    assert "3 sent, 0 failed, 0 skipped, 0 left" in sent.stdout
    assert len(smtp_server.received) == 3

    status = broadside("status", env=cli_env)
    assert status.returncode == 0 and "2016-02-04" in status.stdout and "done" in status.stdout

    again = broadside("send", "--date", "2016-02-04", env=cli_env)  # nothing sends twice
    assert again.returncode == 0 and len(smtp_server.received) == 3


def test_send_without_a_column_or_with_a_bad_date(cli_env: dict[str, str]) -> None:
    assert_one_line_error(
        broadside("send", "--date", "2016-02-05", env=cli_env), "no column for 2016-02-05"
    )
    assert_one_line_error(broadside("send", "--date", "tomorrow", env=cli_env), "--date")


def test_preview_mails_one_copy_and_touches_no_subscriber(
    cli_env: dict[str, str], engine: Engine, smtp_server: SmtpTestServer, tmp_path: Path
) -> None:
    (tmp_path / "columns" / SEED.name).write_text(SEED.read_text())
    add_readers(engine, active=2)
    result = broadside("preview", "--date", "2016-02-04", "--to", "editor@example.com", env=cli_env)
    assert result.returncode == 0, result.stderr
    assert [r.rcpt_tos for r in smtp_server.received] == [["editor@example.com"]]
    with Session(engine) as session:
        assert session.exec(select(Delivery)).all() == []
    assert_one_line_error(
        broadside("preview", "--date", "2016-02-04", "--to", "not an address", env=cli_env), "--to"
    )


def test_digest_preview_mails_the_weeks_columns_and_touches_no_subscriber(
    cli_env: dict[str, str], engine: Engine, smtp_server: SmtpTestServer, tmp_path: Path
) -> None:
    for day, name in (("2026-11-22", "Sunday"), ("2026-11-23", "Monday"), ("2026-11-25", "Wed")):
        (tmp_path / "columns" / f"{day}.md").write_text(
            f"---\ntitle: {name}\ndate: {day}\n---\n\nThe {name} column.\n"
        )
    add_readers(engine, active=2)
    result = broadside(
        "preview", "--digest", "--week", "2026-W48", "--to", "editor@example.com", env=cli_env
    )
    assert result.returncode == 0, result.stderr
    assert "digest of 2026-W48 (2 columns) sent to editor@example.com" in result.stderr
    [mail] = smtp_server.received
    assert mail.rcpt_tos == ["editor@example.com"]
    assert str(mail.message["Message-ID"]).startswith("<digest.2026-W48.preview-")
    text = body(mail, "plain")
    assert "The Monday column." in text and "The Wed column." in text
    assert "The Sunday column." not in text  # the week before: not in this week's preview
    with Session(engine) as session:
        assert session.exec(select(Delivery)).all() == []
        assert session.exec(select(Send)).all() == []


def test_digest_preview_of_a_bad_or_empty_week_is_one_line(cli_env: dict[str, str]) -> None:
    to = ("--to", "editor@example.com")
    assert_one_line_error(
        broadside("preview", "--week", "2026-48", *to, env=cli_env), "--week", "ISO week"
    )
    assert_one_line_error(broadside("preview", "--week", "2025-W53", *to, env=cli_env), "--week")
    assert_one_line_error(
        broadside("preview", "--digest", "--week", "2026-W47", *to, env=cli_env),
        "no column in 2026-W47",
    )
    assert_one_line_error(broadside("preview", "--digest", *to, env=cli_env), "no column in")
    assert_one_line_error(
        broadside("preview", "--digest", "--date", "2016-02-04", *to, env=cli_env), "--week"
    )


def test_sends_show_pause_resume_cancel(
    cli_env: dict[str, str], engine: Engine, smtp_server: SmtpTestServer, tmp_path: Path
) -> None:
    from service.models import Send
    from tests.conftest import make_settings
    from tests.daily import start_seed_send

    add_readers(engine, active=3)
    settings = make_settings(
        cli_env["BROADSIDE_DATABASE_URL"], tmp_path / "var2", smtp_url=smtp_server.url
    )
    send_id = str(start_seed_send(engine, settings).id)

    shown = broadside("sends", "show", send_id, "--json", env=cli_env)
    assert shown.returncode == 0, shown.stderr
    assert '"status": "sending"' in shown.stdout and '"readers": 3' in shown.stdout
    paused = broadside("sends", "pause", send_id, env=cli_env)
    assert paused.returncode == 0 and "paused now" in paused.stderr
    listed = broadside("sends", "list", env=cli_env)
    assert f"broadside sends resume {send_id}" in listed.stdout
    assert broadside("sends", "resume", send_id, env=cli_env).returncode == 0
    cancelled = broadside("sends", "cancel", send_id, "--yes", env=cli_env)
    assert cancelled.returncode == 0 and "cancelled now" in cancelled.stderr
    with Session(engine) as session:
        assert session.exec(select(Send)).one().status == "cancelled"
    assert smtp_server.received == []

    assert_one_line_error(broadside("sends", "pause", send_id, env=cli_env), "cancelled")
    assert_one_line_error(broadside("sends", "show", "999", env=cli_env), "no send 999")
    assert_one_line_error(broadside("send", "--date", "2016-02-04", env=cli_env), "cancelled")


def test_a_local_time_send_delivers_the_zones_whose_morning_came_and_status_shows_the_rest(
    cli_env: dict[str, str], engine: Engine, smtp_server: SmtpTestServer
) -> None:
    # The latest day on which 06:00 has come in UTC+14 (but not yet in UTC-11).
    day = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=14 - 6)).date()
    with transaction(engine) as session:
        sources.import_text(session, "# Today\n\nA column.\n", fmt="markdown", date=day, name="t")
        for address, zone in (
            ("east@example.com", "Pacific/Kiritimati"),
            ("west@example.com", "Pacific/Pago_Pago"),
        ):
            session.add(Subscriber(email=address, status=SubscriberStatus.active, timezone=zone))
    sent = broadside("send", "--date", day.isoformat(), env=cli_env)
    assert sent.returncode == 0, sent.stderr
    assert "1 sent, 0 failed, 0 skipped, 1 left" in sent.stdout
    assert "due at SEND_TIME in their own time zones" in sent.stdout
    assert [mail.rcpt_tos for mail in smtp_server.received] == [["east@example.com"]]
    status = broadside("status", "--json", env=cli_env)
    [record] = json.loads(status.stdout)
    assert [(g["zones"], g["sent"], g["remaining"]) for g in record["by_due"]] == [
        (["Pacific/Kiritimati"], 1, 0),
        (["Pacific/Pago_Pago"], 0, 1),
    ]
    table = broadside("status", env=cli_env)
    assert "by time zone" in table.stdout and "Pacific/Pago_Pago" in table.stdout
