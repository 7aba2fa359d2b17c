"""Columns from an RSS/Atom feed: fetched with a timeout and a size limit, parsed by
feedparser (which sanitizes entry HTML), each entry's HTML also kept as plain text."""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import re
import urllib.error
import urllib.request
from html import escape
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

import feedparser

from .model import Block, ParsedColumn, Section
from .parse import UNTITLED, clean_text
from .store import NAME_MAX, Candidate, ColumnFileError, fit

MAX_FEED_BYTES = 5_000_000
FEED_TIMEOUT_SECONDS = 30.0


def columns_in(
    data: bytes, headers: dict[str, str], location: str
) -> tuple[list[Candidate], list[ColumnFileError]]:
    """Every entry of a fetched feed as a column to store, and what could not become one."""
    feed = feedparser.parse(data, response_headers=headers)
    if feed.get("bozo") and not feed.entries:
        reason = str(feed.get("bozo_exception") or "not a feed")
        return [], [ColumnFileError(location, f"cannot parse feed: {reason}")]
    candidates: list[Candidate] = []
    errors: list[ColumnFileError] = []
    for entry in feed.entries:
        name = fit(str(entry.get("id") or entry.get("link") or location), NAME_MAX)
        label = f"{location} entry {name}"
        try:
            parsed, source_text = _column_from_entry(entry, label)
        except ColumnFileError as exc:
            errors.append(exc)
            continue
        candidates.append(Candidate(parsed, source_text, name, label))
    return candidates, errors


def is_url(url_or_path: str) -> bool:
    """Whether a FEED_URL is fetched over HTTP (else it is a local file)."""
    return urlsplit(url_or_path).scheme in {"http", "https"}


def fetch(url: str) -> tuple[bytes, dict[str, str]]:
    """The feed's bytes and headers (not feedparser's own fetch: no timeout, no limit)."""
    request = urllib.request.Request(url, headers={"User-Agent": "Broadside feed poller"})
    try:
        with urllib.request.urlopen(request, timeout=FEED_TIMEOUT_SECONDS) as response:
            data = response.read(MAX_FEED_BYTES + 1)
            content_type = response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        raise ColumnFileError(url, f"HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise ColumnFileError(url, f"cannot fetch feed: {exc.reason}") from exc
    except (OSError, ValueError) as exc:
        raise ColumnFileError(url, f"cannot fetch feed: {exc}") from exc
    if len(data) > MAX_FEED_BYTES:
        raise ColumnFileError(url, "feed larger than 5 MB")
    return data, {"content-type": content_type, "content-location": url}


def _column_from_entry(entry: Any, name: str) -> tuple[ParsedColumn, str]:
    """One feed entry as a column (one HTML block) and the canonical text its hash is of."""
    date = _entry_date(entry)
    if date is None:
        raise ColumnFileError(name, "entry has no published or updated date")
    body_html = _entry_html(entry)
    body_text = html_to_text(body_html)
    if not body_text:
        raise ColumnFileError(name, "entry has no content")
    title = _entry_title(entry)
    link = str(entry.get("link") or "")
    permalink = link if urlsplit(link).scheme in {"http", "https"} else None
    parsed = ParsedColumn(
        title=title,
        sections=[Section(heading="", blocks=[Block(kind="html", text=body_text, html=body_html)])],
        permalink=permalink,
        date=date,
        source_format="feed",
    )
    source = {"title": title, "date": date.isoformat(), "link": permalink, "html": body_html}
    return parsed, json.dumps(source, ensure_ascii=False, sort_keys=True)


def _entry_date(entry: Any) -> dt.date | None:
    for key in ("published", "updated"):
        written = _date_as_written(entry.get(key))
        if written is not None:
            return written
        parsed = entry.get(f"{key}_parsed")
        if parsed:
            return dt.date(parsed.tm_year, parsed.tm_mon, parsed.tm_mday)
    return None


def _date_as_written(value: object) -> dt.date | None:
    # feedparser's *_parsed is shifted to UTC: a column published late evening in New York
    # would land on the next day. The date as written in the feed is the column's date.
    if not isinstance(value, str):
        return None
    iso = re.match(r"\s*(\d{4}-\d{2}-\d{2})", value)
    try:
        if iso:
            return dt.date.fromisoformat(iso.group(1))
        return email.utils.parsedate_to_datetime(value).date()
    except (TypeError, ValueError):
        return None


def _entry_title(entry: Any) -> str:
    title = str(entry.get("title") or "")
    if "html" in str(entry.get("title_detail", {}).get("type", "")):
        title = html_to_text(title)
    return " ".join(clean_text(title).split()) or UNTITLED


def _entry_html(entry: Any) -> str:
    """The entry's body as safe HTML: full content if given, else the summary."""
    candidates = [*entry.get("content", []), entry.get("summary_detail") or {}]
    for item in candidates:
        value = clean_text(str(item.get("value") or "")).strip()
        if not value:
            continue
        if "html" in str(item.get("type", "")):
            return value
        return "".join(f"<p>{escape(p.strip())}</p>" for p in value.split("\n\n") if p.strip())
    return ""


class _TextExtractor(HTMLParser):
    """Text of an HTML fragment, with blank lines between block elements."""

    BLOCKS = frozenset(
        {"p", "div", "br", "li", "ul", "ol", "blockquote", "pre", "table", "tr", "hr", "figure"}
        | {"h1", "h2", "h3", "h4", "h5", "h6", "figcaption"}
    )

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        self.handle_starttag(tag, [])

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def html_to_text(fragment: str) -> str:
    """Plain text of sanitized HTML: one paragraph per block element."""
    extractor = _TextExtractor()
    extractor.feed(fragment)
    extractor.close()
    paragraphs = "".join(extractor.parts).split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())
