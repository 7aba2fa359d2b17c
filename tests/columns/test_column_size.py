"""A column too large to mail is refused when it is stored, with its size named, and again
before a send is created: it never locks a send that can only fail."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service.columns import sources
from service.columns.mail import mail_size_check
from service.db import transaction
from service.delivery import daily
from service.models import ColumnRecord, Send
from tests import processes
from tests.daily import add_readers, run_job
from tests.smtp_server import SmtpTestServer

DAY = "2016-02-04"


def huge_column(paragraphs: int = 400) -> str:
    body = "\n\n".join(
        f"Paragraph {i}: " + "the talks in Geneva went on late into the night. " * 6
        for i in range(paragraphs)
    )
    return f"---\ntitle: A very long column\ndate: {DAY}\n---\n\n{body}\n"


def small_column() -> str:
    return f"---\ntitle: A short column\ndate: {DAY}\n---\n\nJust one paragraph today.\n"


def test_cli_import_refuses_it_naming_the_size(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    column = tmp_path / f"{DAY}.md"
    column.write_text(huge_column())
    env = processes.environment(database_url, tmp_path / "var", smtp_server.url)
    result = processes.run("columns", "import", str(column), env=env, timeout=60)
    assert result.returncode == 1
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("error: ") and str(column) in line
    assert "too large to mail" in line and "bytes" in line and "100 KB" in line
    with Session(engine) as session:
        assert session.exec(select(ColumnRecord)).all() == []


def test_admin_api_refuses_it_with_422(make_client: object) -> None:
    client: TestClient = make_client(admin_token="admin-token-long-enough")  # type: ignore[operator]
    answer = client.post(
        "/api/v1/admin/columns",
        json={"text": huge_column(), "format": "markdown"},
        headers={"Authorization": "Bearer admin-token-long-enough"},
    )
    assert answer.status_code == 422
    assert "too large to mail" in answer.json()["detail"]


def test_folder_scan_skips_it_and_the_day_sends_nothing(
    engine: Engine,
    database_url: str,
    tmp_path: Path,
    smtp_server: SmtpTestServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from tests.conftest import make_settings

    folder = tmp_path / "columns"
    folder.mkdir()
    (folder / f"{DAY}.md").write_text(huge_column())
    settings = make_settings(
        database_url, tmp_path / "var", smtp_url=smtp_server.url, columns_dir=folder
    )
    add_readers(engine, active=2)
    run_job(engine, settings)
    assert any("too large to mail" in r.message for r in caplog.records)
    assert smtp_server.received == []
    with Session(engine) as session:
        assert session.exec(select(Send)).all() == []


def test_a_column_stored_before_the_check_creates_no_send_and_stays_editable(
    engine: Engine, database_url: str, tmp_path: Path, smtp_server: SmtpTestServer
) -> None:
    from tests.conftest import make_settings

    settings = make_settings(
        database_url, tmp_path / "var", smtp_url=smtp_server.url, columns_dir=tmp_path / "none"
    )
    with transaction(engine) as session:  # as an older version (or other settings) stored it
        sources.import_text(session, huge_column(), fmt="markdown", date=None, name="old")
        column = session.exec(select(ColumnRecord)).one()
    add_readers(engine, active=2)

    with pytest.raises(daily.ColumnNotSendable, match="too large"):
        daily.start_send(engine, settings, column)
    with Session(engine) as session:
        assert session.exec(select(Send)).all() == []

    check = mail_size_check(settings)
    with transaction(engine) as session:
        outcome = sources.import_text(
            session, small_column(), fmt="markdown", date=None, name="fix", check=check
        )
    assert outcome.action == "updated"  # not "locked": no send was created
    run_job(engine, settings)
    assert len(smtp_server.wait_for(2)) == 2
