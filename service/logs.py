"""How every process logs: text or one JSON object a line, the request id, no full addresses."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from contextvars import ContextVar
from typing import Any, TextIO

from .config import Settings

# The request being handled in this context (set by the web edge), for every line it logs.
request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

HANDLER_NAME = "broadside"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(request_tag)s: %(message)s"
# A reader's address is personal data: a log line names a mailbox by its first letter and
# domain, which is enough to tell deliveries apart and to see which provider refused.
# Bounded (RFC 5321: a local part is at most 64 characters) so a long line costs linear time.
ADDRESS_RE = re.compile(
    r"(?<![A-Za-z0-9._%+=-])([A-Za-z0-9._%+=-])[A-Za-z0-9._%+=-]{0,63}"
    r"@([A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})+)"
)
# LogRecord's own attributes; anything else on a record came from `extra=` and is a field.
_OURS = {"message", "asctime", "request_id", "request_tag", "color_message", "taskName"}
_RECORD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | _OURS


def mask_address(address: str) -> str:
    """`ada@example.com` as `a***@example.com`."""
    return mask_addresses(address)


def mask_addresses(text: str) -> str:
    """`text` with every e-mail address in it masked as `a***@example.com`."""
    return ADDRESS_RE.sub(r"\g<1>***@\g<2>", text)


class RewriteMessage(logging.Filter):
    """Rewrites a record's message, arguments and traceback with `rewrite`. Plain arguments
    (str, int, float) stay separate, as uvicorn's access formatter unpacks them; any other
    message is rendered once, here."""

    def rewrite(self, text: str) -> str:
        """The text as it may be logged."""
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place; never drops it."""
        args = record.args
        if isinstance(args, tuple) and all(isinstance(a, str | int | float) for a in args):
            record.msg = self.rewrite(str(record.msg))
            record.args = tuple(self.rewrite(a) if isinstance(a, str) else a for a in args)
        else:  # an exception or object logged with %r/%s: its text may hold anything
            record.msg = self.rewrite(record.getMessage())
            record.args = ()
        if record.exc_info and not record.exc_text:
            # Formatters print exc_text when it is set: the traceback is formatted once, here.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.rewrite(record.exc_text)
        return True


class MaskAddresses(RewriteMessage):
    """Masks every e-mail address in a line (a relay's reply often quotes the recipient)."""

    def rewrite(self, text: str) -> str:
        """`text` with its addresses masked."""
        return mask_addresses(text)


class WithRequestId(logging.Filter):
    """Adds the id of the request being handled (or None) to every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Set `request_id` and, for the text format, `request_tag`."""
        current = request_id.get()
        record.request_id = current
        record.request_tag = f" [{current}]" if current else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, request_id, the `extra=` fields,
    and exc_info (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRIBUTES and key not in line:
                line[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc_info"] = record.exc_text
        return json.dumps(line, default=str, ensure_ascii=False)


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of LOG_FORMAT: human-readable text, or JSON lines."""
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure(settings: Settings, stream: TextIO | None = None) -> logging.Handler:
    """Send every logger's records to `stream` (stderr) in LOG_FORMAT at LOG_LEVEL, with the
    request id and without full addresses; returns the handler it added to the root (in
    place of one an earlier call added)."""
    root = logging.getLogger()
    for earlier in [h for h in root.handlers if h.get_name() == HANDLER_NAME]:
        root.removeHandler(earlier)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(HANDLER_NAME)
    handler.addFilter(MaskAddresses())
    handler.addFilter(WithRequestId())
    handler.setFormatter(formatter(settings.log_format))
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    return handler
