"""Log lines without link tokens: one redaction for uvicorn's access and error log and ours."""

from __future__ import annotations

import copy
import logging
import re
from typing import Any

from uvicorn.config import LOGGING_CONFIG

REDACTED = "…"
# A token in a link is a credential (it confirms, unsubscribes, opens the preferences):
# whoever reads the log must not be able to replay it.
TOKEN_IN_PATH_RE = re.compile(r"(/(?:confirm|unsubscribe|resubscribe|preferences)/)[^/?#\s\"']+")
TOKEN_IN_QUERY_RE = re.compile(r"([?&]t=)[^&#\s\"']+")


def redact(text: str) -> str:
    """`text` with the token of every /confirm/, /unsubscribe/, /resubscribe/, /preferences/
    and ?t= link replaced by an ellipsis."""
    text = TOKEN_IN_PATH_RE.sub(rf"\g<1>{REDACTED}", text)
    return TOKEN_IN_QUERY_RE.sub(rf"\g<1>{REDACTED}", text)


class RedactTokens(logging.Filter):
    """Redacts the message and its traceback. Plain arguments (str, int, float) stay separate,
    as uvicorn's access formatter unpacks them; any other message is rendered once, here."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Replace link tokens in the record's message and arguments with …."""
        args = record.args
        if isinstance(args, tuple) and all(isinstance(a, str | int | float) for a in args):
            record.msg = redact(str(record.msg))
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in args)
        else:  # an exception or object logged with %r/%s: its text may hold a URL
            record.msg = redact(record.getMessage())
            record.args = ()
        if record.exc_info and not record.exc_text:
            # Formatters print exc_text when it is set: the traceback is formatted once, here.
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's own logging set-up with RedactTokens on its handlers, where every access and
    error line passes; a dictConfig by uvicorn installs it rather than resetting it."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_tokens"] = {"()": RedactTokens}
    for handler in config["handlers"].values():
        handler["filters"] = [*handler.get("filters", []), "redact_tokens"]
    return config
