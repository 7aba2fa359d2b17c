"""Importing readers from CSV files and exporting them, in-process and as `broadside` processes,
against a real database: pending or confirmed imports, suppression, repeats, reruns, round trips
and constant memory at 100,000 rows."""

from __future__ import annotations

import csv
import email
import email.policy
import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from service import preferences, subscriber_files, subscriptions
from service.config import Settings
from service.context import AppContext, Requester, build_context
from service.db import transaction
from service.errors import InvalidInput
from service.models import Consent, Subscriber, SubscriberStatus, SuppressionReason
from service.subscriber_files import ExportFormat, ImportSummary, UnusableFile
from tests import processes
from tests.conftest import ROOT, TABLES
from tests.helpers import add_reader, outbox_rows, reader
from tests.smtp_server import SmtpTestServer


@pytest.fixture
def ctx(settings: Settings) -> AppContext:
    return build_context(settings)


@pytest.fixture
def cli_env(database_url: str, tmp_path: Path, smtp_server: SmtpTestServer) -> dict[str, str]:
    return processes.environment(database_url, tmp_path / "var", smtp_server.url)


def import_text(
    engine: Engine,
    ctx: AppContext,
    content: str,
    *,
    confirmed: bool = False,
    consent_source: str | None = None,
    batch_size: int = subscriber_files.IMPORT_BATCH,
) -> ImportSummary:
    return subscriber_files.import_csv(
        engine,
        ctx,
        io.BytesIO(content.encode("utf-8")),
        file_name="list.csv",
        confirmed=confirmed,
        consent_source=consent_source,
        batch_size=batch_size,
    )


def statuses(engine: Engine) -> dict[str, tuple[str, str, str | None]]:
    """Each reader's (status, name, pending name), by address."""
    with Session(engine) as session:
        return {
            s.email: (s.status, s.name, s.pending_name) for s in session.exec(select(Subscriber))
        }


def choices(engine: Engine) -> dict[str, tuple[str | None, str, int]]:
    """Each reader's (time zone, cadence, digest weekday), by address."""
    with Session(engine) as session:
        return {
            s.email: (s.timezone, s.cadence, s.digest_weekday)
            for s in session.exec(select(Subscriber))
        }


def choose(engine: Engine, ctx: AppContext, email: str, **chosen: str) -> None:
    """The reader at `email` saves their preferences page with `chosen`."""
    token = ctx.links.preferences_url(reader(engine, email).id or 0).rsplit("/", 1)[1]
    with transaction(engine) as session:
        preferences.change(session, ctx, token=token, who=Requester(ip="192.0.2.9"), **chosen)


def consents(engine: Engine) -> list[tuple[str, str, str]]:
    """(address, action, source) of every consent record, oldest first."""
    with Session(engine) as session:
        address = {s.id: s.email for s in session.exec(select(Subscriber))}
        records = session.exec(select(Consent).order_by(col(Consent.id)))
        return [(address[c.subscriber_id], c.action, c.source) for c in records]


def export(engine: Engine, fmt: ExportFormat, status: SubscriberStatus | None = None) -> str:
    return "".join(subscriber_files.export_chunks(engine, status=status, fmt=fmt, page_size=2))


def empty(engine: Engine) -> None:
    """Every table emptied, as in a fresh database."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        else:
            for table in TABLES:
                conn.execute(text(f"DELETE FROM {table}"))


def broadside(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return processes.run(*args, env=env, timeout=300)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# Importing -----------------------------------------------------------------------------


def test_imported_readers_are_pending_until_they_confirm_the_mail_they_get(
    engine: Engine, ctx: AppContext
) -> None:
    summary = import_text(
        engine, ctx, "email,name\nAda@Example.com,Ada Lovelace\nbob@example.com,\n"
    )

    assert (summary.imported, summary.mailed, summary.invalid) == (2, 2, 0)
    assert statuses(engine) == {
        "ada@example.com": ("pending", "", "Ada Lovelace"),
        "bob@example.com": ("pending", "", None),
    }
    assert consents(engine) == [
        ("ada@example.com", "import", "import:list.csv"),
        ("bob@example.com", "import", "import:list.csv"),
    ]
    mails = {m.recipient: m for m in outbox_rows(engine)}
    assert set(mails) == {"ada@example.com", "bob@example.com"}
    assert {m.kind for m in mails.values()} == {"import-confirm"}  # checked against suppression
    message = email.message_from_bytes(
        mails["ada@example.com"].message, policy=email.policy.default
    )
    plain = message.get_body(preferencelist=("plain",))
    assert plain is not None and "Ada" not in plain.get_content()  # the mail never echoes a name
    [token] = re.findall(r"https://news\.example\.com/confirm/(\S+)", plain.get_content())

    with transaction(engine) as session:
        subscriptions.confirm(session, ctx, token=token, who=Requester(ip="192.0.2.1"))
    assert statuses(engine)["ada@example.com"] == ("active", "Ada Lovelace", None)


@pytest.mark.parametrize(
    "header",
    ["email,name", "\ufeffemail,name", "Email,Name", "EMAIL,NAME", " E-Mail , name ", "name,email"],
)
def test_header_spellings_a_bom_and_column_order_are_understood(
    header: str, engine: Engine, ctx: AppContext
) -> None:
    first_is_email = header.strip("\ufeff ").lower().startswith("e")
    row = "ada@example.com,Ada" if first_is_email else "Ada,ada@example.com"

    summary = import_text(engine, ctx, f"{header}\r\n{row}\r\n", confirmed=True, consent_source="x")

    assert summary.imported == 1 and summary.ignored_columns == ()
    assert statuses(engine) == {"ada@example.com": ("active", "Ada", None)}


def test_invalid_rows_are_reported_with_their_line_numbers_and_skipped(
    engine: Engine, ctx: AppContext
) -> None:
    content = (
        "email,name\n"
        "ada@example.com,Ada\n"  # line 2
        "not-an-address,Bob\n"  # line 3
        "\n"  # line 4: blank, passed over
        'carol@example.com,"Carol\nthe second line"\n'  # lines 5-6: a name with a line break
        "dan@example..com,Dan\n"  # line 7
        ",,\n"  # line 8: an empty spreadsheet row, passed over
        "erin@example.com,Erin\n"  # line 9
    )

    summary = import_text(engine, ctx, content, confirmed=True, consent_source="x")

    assert (summary.imported, summary.invalid, summary.rows) == (2, 3, 5)
    assert [(i.line, i.value) for i in summary.invalid_lines] == [
        (3, "not-an-address"),
        (5, "Carol\nthe second line"),
        (7, "dan@example..com"),
    ]
    assert summary.invalid_lines[1].reason.startswith("name: ")
    assert set(statuses(engine)) == {"ada@example.com", "erin@example.com"}


def test_invalid_lines_beyond_the_first_thousand_are_only_counted(
    engine: Engine, ctx: AppContext
) -> None:
    content = "email\n" + "nope\n" * 1500 + "ada@example.com\n"

    summary = import_text(engine, ctx, content, confirmed=True, consent_source="x")

    assert (summary.invalid, len(summary.invalid_lines), summary.imported) == (1500, 1000, 1)
    assert summary.invalid_lines[-1].line == 1001


def test_repeats_in_the_file_and_readers_already_there_count_once(
    engine: Engine, ctx: AppContext
) -> None:
    add_reader(engine, "ada@example.com", name="Ada")
    add_reader(engine, "bea@example.com", name="Bea")
    add_reader(engine, "gone@example.com", name="Gone", status=SubscriberStatus.unsubscribed)
    content = (
        "email,name\n"
        "new@example.com,\n"
        "NEW@example.com,Newton\n"  # the same address again: its name is kept
        "ada@example.com,Ada King\n"  # already there: the name changes
        "bea@example.com,\n"  # already there, nothing new
        "gone@example.com,Gone\n"  # unsubscribed: never brought back
        "later@example.com,Later\n"
        "later@example.com,Later\n"  # in the next batch: already on the list by then
    )

    summary = import_text(engine, ctx, content, batch_size=6)

    assert (summary.imported, summary.updated, summary.repeated) == (2, 1, 1)
    assert (summary.unchanged, summary.left, summary.skipped) == (2, 1, 4)
    assert statuses(engine) == {
        "ada@example.com": ("active", "Ada King", None),
        "bea@example.com": ("active", "Bea", None),
        "gone@example.com": ("unsubscribed", "Gone", None),
        "new@example.com": ("pending", "", "Newton"),
        "later@example.com": ("pending", "", "Later"),
    }
    assert sorted(m.recipient for m in outbox_rows(engine)) == [
        "later@example.com",
        "new@example.com",
    ]


def test_suppressed_addresses_are_never_imported_nor_mailed(
    engine: Engine, ctx: AppContext
) -> None:
    add_reader(engine, "gone@example.com", status=SubscriberStatus.complained)
    with transaction(engine) as session:
        subscriptions.suppress(session, ctx, "gone@example.com", SuppressionReason.complained)
        subscriptions.suppress(session, ctx, "erased@example.com", SuppressionReason.erased)
    content = "email\ngone@example.com\nErased@Example.com\nada@example.com\n"

    pending = import_text(engine, ctx, content)
    confirmed = import_text(engine, ctx, content, confirmed=True, consent_source="old list")

    assert (pending.suppressed, pending.imported) == (2, 1)
    assert (confirmed.suppressed, confirmed.updated) == (2, 1)  # ada: pending, now active
    assert reader(engine, "gone@example.com").status == SubscriberStatus.complained
    assert "erased@example.com" not in statuses(engine)
    assert [m.recipient for m in outbox_rows(engine)] == ["ada@example.com"]
    assert [c[0] for c in consents(engine)] == ["ada@example.com", "ada@example.com"]


def test_a_confirmed_import_makes_active_readers_with_consent_naming_the_source(
    engine: Engine, ctx: AppContext
) -> None:
    add_reader(engine, "waiting@example.com", status=SubscriberStatus.pending, name="")
    add_reader(engine, "bounced@example.com", status=SubscriberStatus.bounced)
    content = "email,name\nada@example.com,Ada\nwaiting@example.com,Wai\nbounced@example.com,\n"

    summary = import_text(engine, ctx, content, confirmed=True, consent_source="Mailchimp 2024")

    assert (summary.imported, summary.updated, summary.left, summary.mailed) == (1, 1, 1, 0)
    found = reader(engine, "ada@example.com")
    assert found.status == SubscriberStatus.active and found.confirmed_at is not None
    assert statuses(engine)["waiting@example.com"] == ("active", "Wai", None)
    assert statuses(engine)["bounced@example.com"][0] == "bounced"
    assert sorted(consents(engine)) == [
        ("ada@example.com", "import-confirmed", "Mailchimp 2024"),
        ("waiting@example.com", "import-confirmed", "Mailchimp 2024"),
    ]
    assert outbox_rows(engine) == []


def test_a_confirmed_import_needs_a_consent_source_it_can_keep_whole(
    engine: Engine, ctx: AppContext
) -> None:
    for source in (None, "  ", "x" * 201):
        with pytest.raises(InvalidInput) as refused:
            import_text(
                engine, ctx, "email\nada@example.com\n", confirmed=True, consent_source=source
            )
        assert refused.value.field == "consent_source"
    assert statuses(engine) == {}


def test_rerunning_an_import_changes_nothing(engine: Engine, ctx: AppContext) -> None:
    content = "email,name\n" + "".join(f"r{i}@example.com,R {i}\n" for i in range(25))
    first = import_text(engine, ctx, content, batch_size=10)
    before = (statuses(engine), len(consents(engine)), len(outbox_rows(engine)))

    again = import_text(engine, ctx, content, batch_size=10)

    assert (first.imported, again.imported, again.updated, again.unchanged) == (25, 0, 0, 25)
    assert (statuses(engine), len(consents(engine)), len(outbox_rows(engine))) == before


def test_a_few_rows_import_in_the_callers_own_transaction(engine: Engine, ctx: AppContext) -> None:
    rows = [subscriber_files.Row(2, "ada@example.com", "Ada"), subscriber_files.Row(3, "nope")]
    options = subscriber_files.import_options(confirmed=True, consent_source="phone")

    with pytest.raises(RuntimeError), transaction(engine) as session:
        summary = subscriber_files.import_batch(session, ctx, rows, options)
        assert (summary.imported, summary.invalid, summary.rows) == (1, 1, 2)
        raise RuntimeError("the caller's request fails after the import")

    assert statuses(engine) == {}


def test_a_file_without_an_email_column_or_not_in_utf8_imports_nothing(
    engine: Engine, ctx: AppContext
) -> None:
    for content, needle in [
        (b"", "empty"),
        (b"mail,name\nada@example.com,Ada\n", "no email column"),
        (b"email\nada@example.com\nb\xe9a@example.com\n", "line 3: not UTF-8"),
    ]:
        with pytest.raises(UnusableFile, match=needle):
            subscriber_files.import_csv(engine, ctx, io.BytesIO(content), file_name="x.csv")
    assert statuses(engine) == {}


def test_an_unclosed_quote_stops_the_import_after_the_rows_before_it(
    engine: Engine, ctx: AppContext
) -> None:
    content = 'email,name\nada@example.com,Ada\nbob@example.com,"Bob\n' + "x" * 140_000 + "\n"

    summary = import_text(engine, ctx, content, confirmed=True, consent_source="x")

    assert summary.stopped is not None and summary.stopped.startswith("line 3: not readable")
    assert set(statuses(engine)) == {"ada@example.com"}


def test_new_readers_get_the_time_zone_cadence_and_weekday_their_row_gives(
    engine: Engine, ctx: AppContext
) -> None:
    content = (
        "Email,Time Zone,Cadence,Digest_Weekday\n"
        "ada@example.com,europe/berlin,WEEKLY,3\n"  # names as typed: stored as zoneinfo spells them
        "bob@example.com,America/Los_Angeles,daily,\n"
        "carol@example.com, , ,\n"  # empty cells: the defaults
        "dan@example.com,,weekly,\n"
    )

    summary = import_text(engine, ctx, content, confirmed=True, consent_source="x")

    assert (summary.imported, summary.invalid, summary.ignored_columns) == (4, 0, ())
    assert choices(engine) == {
        "ada@example.com": ("Europe/Berlin", "weekly", 3),
        "bob@example.com": ("America/Los_Angeles", "daily", 7),
        "carol@example.com": (None, "daily", 7),  # None: the service's TIMEZONE
        "dan@example.com": (None, "weekly", 7),
    }


def test_pending_readers_keep_their_rows_choices_until_and_after_they_confirm(
    engine: Engine, ctx: AppContext
) -> None:
    content = "email,timezone,cadence,digest_weekday\nada@example.com,Asia/Tokyo,weekly,1\n"

    import_text(engine, ctx, content)
    pending = choices(engine)
    import_text(engine, ctx, "email\nada@example.com\n", confirmed=True, consent_source="x")

    assert pending == {"ada@example.com": ("Asia/Tokyo", "weekly", 1)}
    assert statuses(engine)["ada@example.com"][0] == "active"
    assert choices(engine) == pending


def test_an_unknown_zone_cadence_or_weekday_is_an_invalid_line_and_the_rest_import(
    engine: Engine, ctx: AppContext
) -> None:
    content = (
        "email,timezone,cadence,digest_weekday\n"
        "ada@example.com,Europe/Berlin,daily,7\n"  # line 2
        "bob@example.com,Mars/Olympus_Mons,daily,7\n"  # line 3
        "carol@example.com,,fortnightly,\n"  # line 4
        "dan@example.com,,weekly,8\n"  # line 5
        "erin@example.com,,weekly,Sunday\n"  # line 6: the number, as the export writes it
        "finn@example.com,UTC,weekly,5\n"  # line 7
    )

    summary = import_text(engine, ctx, content, confirmed=True, consent_source="x")

    assert (summary.imported, summary.invalid, summary.rows) == (2, 4, 6)
    assert [(i.line, i.value, i.reason.split(":")[0]) for i in summary.invalid_lines] == [
        (3, "Mars/Olympus_Mons", "timezone"),
        (4, "fortnightly", "cadence"),
        (5, "8", "digest_weekday"),
        (6, "Sunday", "digest_weekday"),
    ]
    assert "daily, weekly" in summary.invalid_lines[1].reason
    assert choices(engine) == {
        "ada@example.com": ("Europe/Berlin", "daily", 7),
        "finn@example.com": ("UTC", "weekly", 5),
    }


def test_readers_already_there_keep_their_own_choices_and_the_summary_counts_them(
    engine: Engine, ctx: AppContext
) -> None:
    add_reader(engine, "ada@example.com", name="Ada")
    add_reader(engine, "bea@example.com", name="Bea")
    choose(engine, ctx, "ada@example.com", timezone="Asia/Tokyo", cadence="weekly")
    content = (
        "email,name,timezone,cadence,digest_weekday\n"
        "ada@example.com,Ada King,Europe/Berlin,daily,\n"  # her name changes, her choices stay
        "bea@example.com,,,,\n"  # nothing to say: nothing kept
        "new@example.com,,Europe/Paris,,\n"
        "NEW@example.com,,,weekly,2\n"  # a repeat: its non-empty cells add to the first row's
    )

    summary = import_text(engine, ctx, content, confirmed=True, consent_source="x")

    assert (summary.imported, summary.updated, summary.unchanged) == (1, 1, 1)
    assert (summary.repeated, summary.choices_kept) == (1, 1)
    assert statuses(engine)["ada@example.com"] == ("active", "Ada King", None)
    assert choices(engine) == {
        "ada@example.com": ("Asia/Tokyo", "weekly", 7),
        "bea@example.com": (None, "daily", 7),
        "new@example.com": ("Europe/Paris", "weekly", 2),
    }


# Exporting -----------------------------------------------------------------------------


def test_export_as_csv_and_json_lists_every_reader_but_the_erased(
    engine: Engine, ctx: AppContext
) -> None:
    add_reader(engine, "ada@example.com", name="Ada, Countess")
    add_reader(engine, "bob@example.com", name='=HYPERLINK("x")', status=SubscriberStatus.bounced)
    add_reader(engine, "erased-3@erased.invalid", name="", status=SubscriberStatus.erased)
    import_text(engine, ctx, "email,name\ncarol@example.com,Carol\n")

    rows = list(csv.DictReader(io.StringIO(export(engine, ExportFormat.csv))))
    records = json.loads(export(engine, ExportFormat.json))
    active = json.loads(export(engine, ExportFormat.json, SubscriberStatus.active))

    assert list(rows[0]) == [
        "email",
        "name",
        "status",
        "created_at",
        "confirmed_at",
        "timezone",
        "cadence",
        "digest_weekday",
    ]
    assert [(r["email"], r["name"], r["status"]) for r in rows] == [
        ("ada@example.com", "Ada, Countess", "active"),
        ("bob@example.com", '\'=HYPERLINK("x")', "bounced"),  # no formula in a spreadsheet
        ("carol@example.com", "Carol", "pending"),  # the name waiting for confirmation
    ]
    assert [(r["email"], r["name"]) for r in records] == [
        ("ada@example.com", "Ada, Countess"),
        ("bob@example.com", '=HYPERLINK("x")'),
        ("carol@example.com", "Carol"),
    ]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", records[0]["created_at"])
    assert records[2]["confirmed_at"] is None
    assert [r["email"] for r in active] == ["ada@example.com"]
    assert export(engine, ExportFormat.json, SubscriberStatus.complained) == "[\n]\n"


def test_the_export_shows_each_readers_choices_and_an_import_of_it_restores_them(
    engine: Engine, ctx: AppContext
) -> None:
    add_reader(engine, "ada@example.com")
    add_reader(engine, "bob@example.com")
    choose(engine, ctx, "ada@example.com", timezone="Pacific/Kiritimati", cadence="weekly")
    choose(engine, ctx, "ada@example.com", digest_weekday="2")
    before = choices(engine)

    exported = export(engine, ExportFormat.csv)
    records = json.loads(export(engine, ExportFormat.json))
    empty(engine)
    summary = import_text(engine, ctx, exported, confirmed=True, consent_source="round trip")

    rows = list(csv.DictReader(io.StringIO(exported)))

    assert [(r["timezone"], r["cadence"], r["digest_weekday"]) for r in rows] == [
        ("Pacific/Kiritimati", "weekly", "2"),
        ("", "daily", "7"),  # no zone of their own: the service's TIMEZONE
    ]
    assert [(r["timezone"], r["cadence"], r["digest_weekday"]) for r in records] == [
        ("Pacific/Kiritimati", "weekly", 2),
        (None, "daily", 7),
    ]
    assert summary.imported == 2
    assert choices(engine) == before


def test_import_export_import_gives_the_same_readers(engine: Engine, ctx: AppContext) -> None:
    add_reader(engine, "gone@example.com", name="Gone", status=SubscriberStatus.unsubscribed)
    add_reader(engine, "waiting@example.com", name="", status=SubscriberStatus.pending)
    content = "email,name\nada@example.com,=Ada\nbob@example.com,Bob\n"
    import_text(engine, ctx, content, confirmed=True, consent_source="old list")
    first = export(engine, ExportFormat.csv)
    readers = statuses(engine)

    empty(engine)
    summary = import_text(engine, ctx, first, confirmed=True, consent_source="round trip")

    # The export's `status` column keeps a pending reader pending and the one who left out.
    assert (summary.imported, summary.left) == (3, 1)
    assert summary.ignored_columns == ("created_at", "confirmed_at")
    del readers["gone@example.com"]
    assert statuses(engine) == readers
    assert readers["ada@example.com"] == ("active", "=Ada", None)
    assert readers["waiting@example.com"] == ("pending", "", None)


# The command line ----------------------------------------------------------------------


def test_the_import_command_prints_a_summary_with_the_invalid_lines(
    cli_env: dict[str, str], tmp_path: Path, engine: Engine
) -> None:
    listing = tmp_path / "list.csv"
    listing.write_text("email,name,city\nada@example.com,Ada,London\nnope,,\nada@example.com,,\n")

    result = broadside("subscribers", "import", str(listing), env=cli_env)

    assert result.returncode == 0, result.stderr
    assert "warning: ignoring columns 'city'" in result.stderr
    assert "imported 1 · updated 0 · skipped 1 · invalid 1" in result.stdout
    assert "1 repeated in the file" in result.stdout
    assert "line 3: 'nope': email:" in result.stdout
    assert "1 confirmation mails queued" in result.stdout
    assert statuses(engine) == {"ada@example.com": ("pending", "", "Ada")}


def test_the_import_command_names_bad_choices_and_readers_who_kept_theirs_and_exports_them(
    cli_env: dict[str, str], tmp_path: Path, engine: Engine, ctx: AppContext
) -> None:
    add_reader(engine, "ada@example.com")
    choose(engine, ctx, "ada@example.com", timezone="Asia/Tokyo")
    listing = tmp_path / "list.csv"
    listing.write_text(
        "email,timezone,cadence\n"
        "ada@example.com,Europe/Berlin,\n"
        "bob@example.com,Nowhere/Else,\n"
        "carol@example.com,,weekly\n"
    )

    imported = broadside("subscribers", "import", str(listing), env=cli_env)
    exported = broadside("subscribers", "export", env=cli_env)

    assert imported.returncode == 0 and "warning" not in imported.stderr, imported.stderr
    assert "imported 1 · updated 0 · skipped 1 · invalid 1" in imported.stdout
    assert "line 3: 'Nowhere/Else': timezone:" in imported.stdout
    assert "1 readers already on the list kept their own time zone" in imported.stdout
    lines = exported.stdout.splitlines()
    assert lines[0].endswith(",timezone,cadence,digest_weekday")
    assert [line.split(",", 1)[0] for line in lines[1:]] == ["ada@example.com", "carol@example.com"]
    assert lines[1].endswith(",Asia/Tokyo,daily,7") and lines[2].endswith(",,weekly,7")


def test_the_import_command_refuses_confirmed_without_a_source_and_unusable_files(
    cli_env: dict[str, str], tmp_path: Path, engine: Engine
) -> None:
    good = tmp_path / "good.csv"
    good.write_text("email\nada@example.com\n")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("email\nbéa@example.com\n".encode("latin-1"))
    headless = tmp_path / "headless.csv"
    headless.write_text("ada@example.com\n")

    refused = broadside("subscribers", "import", str(good), "--confirmed", env=cli_env)
    assert_one_line_error(refused, "--confirmed needs --consent-source")
    assert refused.returncode == 2
    for path, needle in [
        (tmp_path / "missing.csv", "missing.csv: No such file"),
        (latin, "latin.csv: line 2: not UTF-8"),
        (headless, "headless.csv: the header row (line 1) has no email column"),
    ]:
        result = broadside("subscribers", "import", str(path), env=cli_env)
        assert_one_line_error(result, needle)
        assert result.returncode == 1
    assert statuses(engine) == {}


def test_the_export_command_writes_csv_or_json_to_stdout_or_a_file(
    cli_env: dict[str, str], tmp_path: Path, engine: Engine
) -> None:
    add_reader(engine, "ada@example.com", name="Ada Ñandú")
    add_reader(engine, "bob@example.com", name="Bob", status=SubscriberStatus.pending)
    output = tmp_path / "readers.json"

    to_stdout = broadside("subscribers", "export", "--status", "active", env=cli_env)
    to_file = broadside(
        "subscribers", "export", "--format", "json", "--output", str(output), env=cli_env
    )

    assert to_stdout.returncode == 0 and to_file.returncode == 0, to_file.stderr
    assert to_stdout.stdout.splitlines()[1].startswith("ada@example.com,Ada Ñandú,active,")
    assert len(to_stdout.stdout.splitlines()) == 2
    assert [r["email"] for r in json.loads(output.read_text("utf-8"))] == [
        "ada@example.com",
        "bob@example.com",
    ]
    assert not list(tmp_path.glob(".*.partial"))


# Constant memory -----------------------------------------------------------------------


def write_listing(path: Path, count: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["email", "name", "joined"])
        writer.writerows((f"Reader.{i}@Example.com", f"Reader {i}", "2020") for i in range(count))


# A small launcher, so that the peak the kernel reports is the command's own: a child forked
# from this test process would count the test process's memory at the fork as its own.
LAUNCHER = """
import resource, subprocess, sys
with open(sys.argv[1], "w") as log:
    code = subprocess.call(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, code)
"""


def measured(*args: str, env: dict[str, str], log: Path) -> tuple[int, float, str]:
    """Run `broadside ARGS`; its exit code, its peak resident memory in MB, and its output."""
    command = [sys.executable, "-c", LAUNCHER, str(log), sys.executable, "-m", "service.cli"]
    done = subprocess.run(
        [*command, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    peak_kb, code = done.stdout.split()
    return int(code), int(peak_kb) / 1024, log.read_text()


@pytest.mark.slow
def test_an_import_export_round_trip_of_100000_rows_runs_in_constant_memory(
    cli_env: dict[str, str], tmp_path: Path, engine: Engine
) -> None:
    peaks: dict[int, tuple[float, float, float]] = {}
    for count in (10_000, 100_000):
        empty(engine)
        listing, exported = tmp_path / f"{count}.csv", tmp_path / f"{count}-export.csv"
        write_listing(listing, count)
        args = ("--confirmed", "--consent-source", "memory test")
        started = time.monotonic()
        code, imported, report = measured(
            "subscribers", "import", str(listing), *args, env=cli_env, log=tmp_path / "import.log"
        )
        rate = count / (time.monotonic() - started)
        assert code == 0 and f"imported {count:,}" in report, report
        code, exporting, report = measured(
            "subscribers", "export", "--output", str(exported), env=cli_env, log=tmp_path / "x.log"
        )
        assert code == 0, report
        empty(engine)
        code, again, report = measured(
            "subscribers", "import", str(exported), *args, env=cli_env, log=tmp_path / "again.log"
        )
        assert code == 0 and f"imported {count:,}" in report, report
        peaks[count] = (imported, exporting, again)
        print(f"{count:,} rows: import {rate:,.0f} rows/s; peak MB {peaks[count]}")

    assert len(statuses(engine)) == 100_000
    for small, large in zip(peaks[10_000], peaks[100_000], strict=True):
        assert large <= small * 1.15, peaks  # ten times the rows, not ten times the memory
