"""Parse the World View plain-text column into a ParsedColumn, degrading to plain paragraphs."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from .model import Block, BlockKind, ParsedColumn, Section

UNTITLED = "Untitled column"
CAPTION_MAX_CHARS = 300
BYLINE_MAX_CHARS = 100
BYLINE_MAX_WORDS = 12

# C0/C1 controls (but newline and tab), the BOM and lone surrogates: none of them is text, and
# NUL or a surrogate makes PostgreSQL or the UTF-8 encoder refuse the whole column.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufeff\ud800-\udfff]")
_QUOTES = str.maketrans(
    {
        "‘": "'",
        "’": "'",
        "‛": "'",
        "′": "'",
        "`": "'",
        "´": "'",
        "“": '"',
        "”": '"',
        "„": '"',
        "″": '"',
        "«": '"',
        "»": '"',
    }
)
_CURLY = frozenset("‘’“”")
_TITLE_PREFIX = re.compile(r"^world\s*view\s*:\s*", re.IGNORECASE)
_BULLET = re.compile(r"^(?:•\s*|[*\-–]\s+)(.*)$")
_KEYS = re.compile(r"^keys\s*:(.*)$", re.IGNORECASE)
_PERMALINK = re.compile(
    r"^permanent\s+web\s+link\s+to\s+this\s+article\b[\s:.\-–—]*(.*)$", re.IGNORECASE
)
_URL_ONLY = re.compile(r"^<?(https?://[^\s<>]+?)>?[.,;]?$", re.IGNORECASE)
_CREDIT = re.compile(r"\([^()]{1,60}\)$")
_MARKER = "thismorningskeyheadlines"
_BOILERPLATE = frozenset(
    {
        "receivedailyworldviewcolumnsbyemail",
        "pleaseletusknowifyourehavingissueswithcommenting",
    }
)


class ColumnFormatError(ValueError):
    """The text cannot be a column at all (it is empty, or its front matter is broken)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def clean_text(text: str) -> str:
    """Normalise newlines to LF and drop control characters other than newline and tab."""
    return _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def fold_quotes(text: str) -> str:
    """Straight quotes for typographic ones, so ‘pause’ and 'pause' compare equal."""
    return text.translate(_QUOTES)


def heading_key(text: str) -> str:
    """Compare headings case-, whitespace- and quote-insensitively."""
    return " ".join(fold_quotes(text).casefold().split())


def loose_key(text: str) -> str:
    """Letters and digits only: boilerplate matches whatever its punctuation and case."""
    return re.sub(r"[\W_]+", "", fold_quotes(text).casefold())


def parse_worldview(text: str) -> ParsedColumn:
    """Parse a World View column; anything unrecognised becomes plain paragraphs."""
    lines = [line.strip() for line in clean_text(text).split("\n")]
    filled = [i for i, line in enumerate(lines) if line]
    if not filled:
        raise ColumnFormatError("no text")
    title_at = filled[0]
    headlines, headline_lines = _find_headlines(lines, title_at)
    used = {title_at, *headline_lines}
    byline_at = _byline_index(lines, title_at, used, headlines)
    if byline_at is not None:
        used.add(byline_at)
    body = _parse_body([("" if i in used else line) for i, line in enumerate(lines)], headlines)
    return ParsedColumn(
        title=_TITLE_PREFIX.sub("", lines[title_at]).strip() or UNTITLED,
        byline=lines[byline_at] if byline_at is not None else "",
        headlines=headlines,
        sections=body.sections(bool(headlines)),
        keys=body.keys,
        permalink=body.permalink,
        source_format="worldview",
    )


def _find_headlines(lines: list[str], title_at: int) -> tuple[list[str], set[int]]:
    """The bullets under "This morning's key headlines", and the lines they took."""
    marker = next(
        (i for i in range(title_at + 1, len(lines)) if loose_key(lines[i]).startswith(_MARKER)),
        None,
    )
    if marker is None:
        return [], set()
    headlines: list[str] = []
    taken = {marker}
    for i in range(marker + 1, len(lines)):
        if not lines[i]:
            continue
        match = _BULLET.match(lines[i])
        if match is None:
            break
        taken.add(i)
        if match.group(1).strip():
            headlines.append(match.group(1).strip())
    return headlines, taken


def _byline_index(
    lines: list[str], title_at: int, used: set[int], headlines: list[str]
) -> int | None:
    """The short line right after the title ("The Associated Press"), if there is one."""
    at = next((i for i in range(title_at + 1, len(lines)) if lines[i]), None)
    if at is None or at in used:
        return None
    line = lines[at]
    looks_short = len(line) <= BYLINE_MAX_CHARS and len(line.split()) <= BYLINE_MAX_WORDS
    is_structure = (
        line[-1] in ".!?:;"
        or heading_key(line) in {heading_key(h) for h in headlines}
        or _KEYS.match(line) is not None
        or _boilerplate(lines, at) is not None
    )
    return at if looks_short and not is_structure else None


@dataclass
class _Body:
    """What the walk over the body collects, section by section."""

    parts: list[Section] = field(default_factory=lambda: [Section(heading="")])
    keys: list[str] = field(default_factory=list)
    permalink: str | None = None
    paragraph: list[str] = field(default_factory=list)

    def flush(self) -> None:
        if self.paragraph:
            self.add("paragraph", " ".join(self.paragraph))
            self.paragraph = []

    def add(self, kind: BlockKind, text: str) -> None:
        self.parts[-1].blocks.append(Block(kind=kind, text=text, html=html.escape(text)))

    def sections(self, has_headlines: bool) -> list[Section]:
        # Text before the first heading is kept, but an empty lead section is noise.
        if has_headlines and len(self.parts) > 1 and not self.parts[0].blocks:
            return self.parts[1:]
        return self.parts


def _parse_body(lines: list[str], headlines: list[str]) -> _Body:
    """Walk the body: headings open sections; captions, keys and boilerplate are picked out."""
    body = _Body()
    pending = [heading_key(h) for h in headlines]
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line:
            body.flush()
            i += 1
        elif keys := _KEYS.match(line):
            body.flush()
            body.keys.extend(k for k in _split_keys(keys.group(1)) if k not in body.keys)
            i += 1
        elif (skip := _boilerplate(lines, i)) is not None:
            body.flush()
            body.permalink = body.permalink or skip[1]
            i = skip[0]
        elif heading_key(line) in pending:
            body.flush()
            pending.remove(heading_key(line))
            body.parts.append(Section(heading=line))
            i += 1
        elif (end := _caption_end(lines, i)) > i + 1:
            body.flush()
            body.add("caption", _preferred_copy(lines[i:end]))
            i = end
        else:
            body.paragraph.append(line)
            i += 1
    body.flush()
    return body


def _split_keys(value: str) -> Iterator[str]:
    return (key.strip() for key in value.split(",") if key.strip())


def _boilerplate(lines: list[str], at: int) -> tuple[int, str | None] | None:
    """(index after the boilerplate, permalink or None) when lines[at] is site boilerplate."""
    line = lines[at]
    if loose_key(line) in _BOILERPLATE:
        return at + 1, None
    match = _PERMALINK.match(line)
    if match is None:
        return None
    rest = match.group(1).strip()
    if rest:
        url = _URL_ONLY.match(rest)
        # Other words after the phrase mean this is a sentence, not the link line.
        return (at + 1, url.group(1)) if url else None
    after = next((i for i in range(at + 1, len(lines)) if lines[i]), None)
    url = _URL_ONLY.match(lines[after]) if after is not None else None
    if after is not None and url:
        return after + 1, url.group(1)
    return at + 1, None


def _caption_end(lines: list[str], at: int) -> int:
    """End of the run of copies of a caption-shaped lines[at] (at + 1 when it is no caption)."""
    if not _caption_shaped(lines[at]):
        return at + 1
    key = fold_quotes(lines[at])
    end = at + 1
    while end < len(lines) and lines[end] and fold_quotes(lines[end]) == key:
        end += 1
    return end


def _caption_shaped(line: str) -> bool:
    """Short, and no sentence ending unless it ends with a credit such as "(Reuters)"."""
    if len(line) > CAPTION_MAX_CHARS:
        return False
    return _CREDIT.search(line) is not None or line.rstrip("\"'”’")[-1:] not in {".", "!", "?"}


def _preferred_copy(copies: list[str]) -> str:
    """The copy with typographic quotes: the site pastes one plain and one curly version."""
    return max(copies, key=lambda line: sum(ch in _CURLY for ch in line))
