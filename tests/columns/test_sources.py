"""Where columns come from: files, folders, admin text and feeds, stored one per date."""

from __future__ import annotations

import datetime as dt
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import func, select

from service.columns.model import sections_from_json
from service.columns.sources import (
    date_from_name,
    import_paths,
    import_text,
    poll_feed,
    read_column_file,
)
from service.columns.store import ColumnFileError, slug_for, store_column
from service.db import transaction
from service.models import ColumnRecord, Send
from tests.conftest import SEED

SEED_DATE = dt.date(2016, 2, 4)
# The full title would make 82 characters; the slug stops at the last whole word within 80.
SEED_SLUG = "2016-02-04-syria-peace-talks-collapse-as-russia-carpet-bombs-opposition-in"
MARKDOWN = "---\ntitle: {title}\ndate: {date}\n---\n## Section\n\nBody of the column.\n"


def column_count(engine: Engine) -> int:
    with transaction(engine) as session:
        return session.exec(select(func.count()).select_from(ColumnRecord)).one()


def column_on(engine: Engine, date: dt.date) -> ColumnRecord:
    with transaction(engine) as session:
        return session.exec(select(ColumnRecord).where(ColumnRecord.date == date)).one()


def import_one(engine: Engine, path: Path) -> str:
    with transaction(engine) as session:
        outcomes, errors = import_paths(session, [path])
    assert errors == []
    return outcomes[0].action


# --- names, slugs, errors -------------------------------------------------------------


def test_slug_is_date_and_ascii_words() -> None:
    assert slug_for(SEED_DATE, "Syria's Talks: Collapse!") == "2016-02-04-syrias-talks-collapse"
    assert slug_for(SEED_DATE, "Ça s’est passé à Zürich") == "2016-02-04-ca-sest-passe-a-zurich"


def test_slug_is_never_empty_and_never_long() -> None:
    assert slug_for(SEED_DATE, "") == "2016-02-04-column"
    assert slug_for(SEED_DATE, "北京 ???") == "2016-02-04-column"
    long = slug_for(SEED_DATE, "word " * 100)
    assert len(long) <= 80
    assert long.endswith("-word")
    assert len(slug_for(SEED_DATE, "x" * 200)) <= 80


@pytest.mark.parametrize(
    ("name", "date"),
    [
        ("world-view-2016-02-04.txt", SEED_DATE),
        ("2016-02-04.md", SEED_DATE),
        ("draft-2016-13-45-then-2016-02-04.md", SEED_DATE),
        ("world-view.txt", None),
        ("12016-02-045.txt", None),
    ],
)
def test_date_comes_from_anywhere_in_the_file_name(name: str, date: dt.date | None) -> None:
    assert date_from_name(name) == date


def test_column_file_error_reads_name_colon_reason_on_one_line() -> None:
    error = ColumnFileError("columns/bad.txt", "not UTF-8\ntext")

    assert str(error) == "columns/bad.txt: not UTF-8 text"
    assert (error.name, error.reason) == ("columns/bad.txt", "not UTF-8 text")


# --- reading files --------------------------------------------------------------------


def test_seed_file_reads_with_the_date_from_its_name() -> None:
    parsed, text = read_column_file(SEED)

    assert parsed.date == SEED_DATE
    assert parsed.source_format == "worldview"
    assert text == SEED.read_text(encoding="utf-8")


def test_front_matter_date_wins_over_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "2020-01-01-column.md"
    path.write_text(MARKDOWN.format(title="T", date="2024-03-01"), encoding="utf-8")

    parsed, _ = read_column_file(path)

    assert parsed.date == dt.date(2024, 3, 1)
    assert parsed.source_format == "markdown"


def test_utf8_bom_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "2016-02-04.txt"
    path.write_bytes(b"\xef\xbb\xbfWorld View: Title\n\nBody.\n")

    assert read_column_file(path)[0].title == "Title"


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("2016-02-04.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "binary"),
        ("2016-02-04.txt", "Caf\u00e9 au lait\n".encode("latin-1"), "not UTF-8"),
        ("column.txt", b"World View: T\n\nBody.\n", "no date"),
        ("2016-02-04.txt", b"  \n\n", "no text"),
        ("2016-02-04.md", b"---\ntitle: [oops\n---\nx", "invalid front matter"),
        ("2016-02-04.txt", b"a" * 1_000_001, "larger than 1 MB"),
    ],
)
def test_unusable_file_raises_an_error_naming_it(
    tmp_path: Path, name: str, content: bytes, reason: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)

    with pytest.raises(ColumnFileError) as caught:
        read_column_file(path)

    assert caught.value.name == str(path)
    assert reason in caught.value.reason
    assert "\n" not in str(caught.value)


def test_missing_file_and_directory_are_reported(tmp_path: Path) -> None:
    with pytest.raises(ColumnFileError, match="file not found"):
        read_column_file(tmp_path / "2016-02-04.txt")
    (tmp_path / "2016-02-05.txt").mkdir()
    with pytest.raises(ColumnFileError, match="is a directory"):
        read_column_file(tmp_path / "2016-02-05.txt")


# --- storing --------------------------------------------------------------------------


def test_seed_import_creates_one_column_with_its_structure(engine: Engine) -> None:
    assert import_one(engine, SEED) == "created"

    record = column_on(engine, SEED_DATE)
    assert record.slug == SEED_SLUG
    assert record.byline == "The Associated Press"
    assert len(record.headlines) == 2
    assert len(record.keys) == 7
    assert [s.heading for s in sections_from_json(record.sections)] == record.headlines
    assert record.source_format == "worldview"
    assert record.source_name == str(SEED)
    assert len(record.content_hash) == 64


def test_reimporting_the_same_file_is_unchanged_and_writes_nothing(engine: Engine) -> None:
    import_one(engine, SEED)
    before = column_on(engine, SEED_DATE)

    assert import_one(engine, SEED) == "unchanged"

    after = column_on(engine, SEED_DATE)
    assert column_count(engine) == 1
    assert after.updated_at == before.updated_at
    assert after.id == before.id


def test_edit_before_sending_updates_the_column(engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "world-view-2016-02-04.txt"
    shutil.copy(SEED, path)
    import_one(engine, path)
    before = column_on(engine, SEED_DATE)
    path.write_text(
        SEED.read_text(encoding="utf-8").replace("Syria Peace Talks", "Geneva Talks"),
        encoding="utf-8",
    )

    assert import_one(engine, path) == "updated"

    after = column_on(engine, SEED_DATE)
    assert column_count(engine) == 1
    assert after.id == before.id
    assert after.title.startswith("Geneva Talks Collapse")
    assert after.slug.startswith("2016-02-04-geneva-talks-collapse")
    assert after.content_hash != before.content_hash
    assert after.updated_at > before.updated_at


def test_edit_after_sending_started_is_locked_and_changes_nothing(
    engine: Engine, tmp_path: Path
) -> None:
    path = tmp_path / "world-view-2016-02-04.txt"
    shutil.copy(SEED, path)
    with transaction(engine) as session:
        outcomes, _ = import_paths(session, [path])
        session.add(Send(column_id=outcomes[0].column_id))
    before = column_on(engine, SEED_DATE)
    path.write_text("World View: Rewritten\n\nNew body.\n", encoding="utf-8")

    assert import_one(engine, path) == "locked"

    after = column_on(engine, SEED_DATE)
    assert after.title == before.title
    assert after.source_text == before.source_text
    assert after.sections == before.sections
    assert after.updated_at == before.updated_at


def test_store_column_needs_a_date(engine: Engine) -> None:
    parsed, text = read_column_file(SEED)
    parsed.date = None

    with transaction(engine) as session, pytest.raises(ValueError):
        store_column(session, parsed, source_text=text, source_name="x")


def test_overlong_title_and_nul_in_source_are_stored_safely(engine: Engine) -> None:
    text = "World View: " + "Long " * 200 + "\n\nBody\x00 text.\n"

    with transaction(engine) as session:
        outcome = import_text(session, text, fmt="worldview", date=SEED_DATE, name="api")

    record = column_on(engine, SEED_DATE)
    assert outcome.action == "created"
    assert len(record.title) <= 500
    assert "\x00" not in record.source_text


# --- admin text -----------------------------------------------------------------------


def test_import_text_with_a_date_creates_the_column(engine: Engine) -> None:
    text = SEED.read_text(encoding="utf-8")

    with transaction(engine) as session:
        outcome = import_text(session, text, fmt="worldview", date=SEED_DATE, name="admin")

    assert (outcome.action, outcome.date, outcome.slug) == ("created", SEED_DATE, SEED_SLUG)
    assert column_count(engine) == 1


def test_import_text_without_any_date_is_refused(engine: Engine) -> None:
    with transaction(engine) as session, pytest.raises(ColumnFileError) as caught:
        import_text(session, "World View: T\n\nBody.", fmt="worldview", date=None, name="admin")

    assert caught.value.name == "admin"
    assert "no date" in caught.value.reason
    assert column_count(engine) == 0


def test_import_text_markdown_date_from_front_matter_or_overridden(engine: Engine) -> None:
    text = MARKDOWN.format(title="From the API", date="2024-03-01")
    with transaction(engine) as session:
        own = import_text(session, text, fmt="markdown", date=None, name="api")
        other = import_text(session, text, fmt="markdown", date=dt.date(2024, 3, 2), name="api")

    assert own.date == dt.date(2024, 3, 1)
    assert other.date == dt.date(2024, 3, 2)
    assert column_on(engine, dt.date(2024, 3, 2)).source_format == "markdown"


def test_import_text_bad_front_matter_is_a_column_file_error(engine: Engine) -> None:
    with transaction(engine) as session, pytest.raises(ColumnFileError, match="front matter"):
        import_text(session, "---\ntitle: [\n---\nx", fmt="markdown", date=SEED_DATE, name="api")


# --- folders --------------------------------------------------------------------------


def test_folder_import_reports_bad_files_by_name_and_imports_the_good_ones(
    engine: Engine, tmp_path: Path
) -> None:
    shutil.copy(SEED, tmp_path / "world-view-2016-02-04.txt")
    (tmp_path / "2024-03-01.md").write_text(MARKDOWN.format(title="Good", date="2024-03-01"))
    (tmp_path / "2024-03-02-binary.txt").write_bytes(b"\x00\x01\x02\x00" * 50)
    (tmp_path / "2024-03-03-latin1.txt").write_bytes("Tit\u00e9\n\nCaf\u00e9.".encode("latin-1"))
    (tmp_path / "undated.txt").write_text("World View: T\n\nBody.\n")
    (tmp_path / ".2024-03-04-hidden.txt").write_text("World View: Hidden\n\nx\n")
    (tmp_path / "2024-03-05-notes.pdf").write_text("not a column")
    (tmp_path / "2024-03-06-sub").mkdir()
    (tmp_path / "2024-03-06-sub" / "2024-03-06.txt").write_text("World View: Nested\n\nx\n")

    with transaction(engine) as session:
        outcomes, errors = import_paths(session, [tmp_path])

    assert sorted((o.date, o.action) for o in outcomes) == [
        (SEED_DATE, "created"),
        (dt.date(2024, 3, 1), "created"),
    ]
    reported = {Path(e.name).name: e.reason for e in errors}
    assert set(reported) == {"2024-03-02-binary.txt", "2024-03-03-latin1.txt", "undated.txt"}
    assert "binary" in reported["2024-03-02-binary.txt"]
    assert "not UTF-8" in reported["2024-03-03-latin1.txt"]
    assert "no date" in reported["undated.txt"]
    assert column_count(engine) == 2


def test_missing_path_is_reported_and_others_still_import(engine: Engine, tmp_path: Path) -> None:
    missing = tmp_path / "2016-02-05.txt"

    with transaction(engine) as session:
        outcomes, errors = import_paths(session, [missing, SEED])

    assert [o.action for o in outcomes] == ["created"]
    assert [str(e) for e in errors] == [f"{missing}: file not found"]


def test_two_files_for_one_date_in_one_batch_keep_the_first(engine: Engine, tmp_path: Path) -> None:
    (tmp_path / "2024-03-01-a.md").write_text(MARKDOWN.format(title="First", date="2024-03-01"))
    (tmp_path / "2024-03-01-b.md").write_text(MARKDOWN.format(title="Second", date="2024-03-01"))

    with transaction(engine) as session:
        outcomes, errors = import_paths(session, [tmp_path])

    assert [o.action for o in outcomes] == ["created"]
    assert len(errors) == 1
    assert errors[0].name.endswith("2024-03-01-b.md")
    assert column_on(engine, dt.date(2024, 3, 1)).title == "First"


# --- feeds ----------------------------------------------------------------------------

ATOM = """<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom">
  <title>World View</title><id>urn:wv</id><updated>2016-02-05T04:30:00Z</updated>
  <entry>
    <title>Syria talks collapse</title><id>urn:wv:1</id>
    <link href="https://example.com/wv/2016-02-04"/>
    <published>2016-02-04T23:30:00-05:00</published>
    <content type="html">&lt;p&gt;The talks &lt;b&gt;collapsed&lt;/b&gt;.
      &lt;script&gt;steal()&lt;/script&gt;&lt;/p&gt;
      &lt;p&gt;&lt;a href="javascript:alert(1)"&gt;More&lt;/a&gt; to come.&lt;/p&gt;</content>
  </entry>
  <entry>
    <title type="html">Kerry &lt;i&gt;warns&lt;/i&gt;</title><id>urn:wv:2</id>
    <link href="javascript:alert(2)"/>
    <updated>2016-02-03T08:00:00Z</updated>
    <summary>Plain summary text.</summary>
  </entry>
  <entry>
    <title>No date here</title><id>urn:wv:3</id>
    <content type="html">&lt;p&gt;Undated.&lt;/p&gt;</content>
  </entry>
</feed>
"""

RSS = """<?xml version="1.0"?>
<rss version="2.0"><channel><title>WV</title><link>https://example.com/</link>
<item><title>RSS column</title><link>https://example.com/rss/1</link>
<pubDate>Thu, 04 Feb 2016 22:00:00 -0800</pubDate>
<description>&lt;p&gt;From RSS.&lt;/p&gt;</description></item>
</channel></rss>
"""


def test_atom_feed_from_a_local_file_imports_dated_entries(engine: Engine, tmp_path: Path) -> None:
    feed = tmp_path / "feed.atom"
    feed.write_text(ATOM, encoding="utf-8")

    with transaction(engine) as session:
        outcomes, errors = poll_feed(session, str(feed))

    assert sorted((o.date, o.action) for o in outcomes) == [
        (dt.date(2016, 2, 3), "created"),
        (SEED_DATE, "created"),  # the date as written, not shifted to UTC
    ]
    assert [e.name for e in errors] == [f"{feed} entry urn:wv:3"]
    assert "no published or updated date" in errors[0].reason
    record = column_on(engine, SEED_DATE)
    block = sections_from_json(record.sections)[0].blocks[0]
    assert record.title == "Syria talks collapse"
    assert record.permalink == "https://example.com/wv/2016-02-04"
    assert record.source_format == "feed"
    assert block.kind == "html"
    assert block.text == "The talks collapsed.\n\nMore to come."
    assert "<b>collapsed</b>" in block.html
    assert "<script" not in block.html and "steal" not in block.html
    assert "javascript:" not in block.html


def test_feed_entry_with_html_title_and_bad_link_is_cleaned(engine: Engine, tmp_path: Path) -> None:
    feed = tmp_path / "feed.atom"
    feed.write_text(ATOM, encoding="utf-8")

    with transaction(engine) as session:
        poll_feed(session, str(feed))

    record = column_on(engine, dt.date(2016, 2, 3))
    assert record.title == "Kerry warns"
    assert record.permalink is None
    assert sections_from_json(record.sections)[0].blocks[0].text == "Plain summary text."


def test_polling_the_same_feed_again_changes_nothing(engine: Engine, tmp_path: Path) -> None:
    feed = tmp_path / "feed.atom"
    feed.write_text(ATOM, encoding="utf-8")
    with transaction(engine) as session:
        poll_feed(session, str(feed))

    with transaction(engine) as session:
        outcomes, _ = poll_feed(session, str(feed))

    assert [o.action for o in outcomes] == ["unchanged", "unchanged"]
    assert column_count(engine) == 2


def test_rss_feed_uses_the_pubdate_as_written(engine: Engine, tmp_path: Path) -> None:
    feed = tmp_path / "feed.rss"
    feed.write_text(RSS, encoding="utf-8")

    with transaction(engine) as session:
        outcomes, errors = poll_feed(session, str(feed))

    assert errors == []
    assert [(o.date, o.action) for o in outcomes] == [(SEED_DATE, "created")]


@pytest.mark.parametrize("content", [b"this is <<< not a feed", b"\x00\x01binary"])
def test_unparseable_feed_is_one_error_naming_it(
    engine: Engine, tmp_path: Path, content: bytes
) -> None:
    feed = tmp_path / "feed.xml"
    feed.write_bytes(content)

    with transaction(engine) as session:
        outcomes, errors = poll_feed(session, str(feed))

    assert outcomes == []
    assert len(errors) == 1
    assert errors[0].name == str(feed)


def test_missing_feed_file_is_one_error(engine: Engine, tmp_path: Path) -> None:
    with transaction(engine) as session:
        outcomes, errors = poll_feed(session, str(tmp_path / "nope.xml"))

    assert outcomes == []
    assert [e.reason for e in errors] == ["file not found"]


@pytest.fixture
def feed_server(tmp_path: Path) -> Iterator[str]:
    """A local HTTP server for the feed: the poller's own fetch path, without the Internet."""
    (tmp_path / "feed.rss").write_text(RSS, encoding="utf-8")

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(tmp_path), **kwargs)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_feed_over_http_imports_and_a_404_is_reported(engine: Engine, feed_server: str) -> None:
    with transaction(engine) as session:
        outcomes, errors = poll_feed(session, f"{feed_server}/feed.rss")
        _, missing = poll_feed(session, f"{feed_server}/gone.rss")

    assert errors == []
    assert [o.action for o in outcomes] == ["created"]
    assert [str(e) for e in missing] == [f"{feed_server}/gone.rss: HTTP 404 File not found"]


def test_unreachable_feed_url_is_one_error_naming_it(engine: Engine) -> None:
    url = "http://127.0.0.1:9/feed.xml"  # the discard port: nothing listens there

    with transaction(engine) as session:
        outcomes, errors = poll_feed(session, url)

    assert outcomes == []
    assert [e.name for e in errors] == [url]
