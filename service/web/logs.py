"""Log lines without link tokens: one redaction for uvicorn's access and error log and ours."""

from __future__ import annotations

import copy
import re
from typing import Any

from uvicorn.config import LOGGING_CONFIG

from ..logs import JsonFormatter, MaskAddresses, RewriteMessage, WithRequestId

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


class RedactTokens(RewriteMessage):
    """Replaces link tokens in a record's message, arguments and traceback with …."""

    def rewrite(self, text: str) -> str:
        """`text` without link tokens."""
        return redact(text)


def uvicorn_log_config(log_format: str = "text") -> dict[str, Any]:
    """uvicorn's own logging set-up with RedactTokens, MaskAddresses and the request id on its
    handlers, where every access and error line passes, and JSON lines for LOG_FORMAT=json;
    a dictConfig by uvicorn installs it rather than resetting it."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {}).update(
        redact_tokens={"()": RedactTokens},
        mask_addresses={"()": MaskAddresses},
        request_id={"()": WithRequestId},
    )
    for handler in config["handlers"].values():
        filters = ["redact_tokens", "mask_addresses", "request_id"]
        handler["filters"] = [*handler.get("filters", []), *filters]
    if log_format == "json":
        for name in config["formatters"]:
            config["formatters"][name] = {"()": JsonFormatter}
    return config
