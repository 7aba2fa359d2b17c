"""A message as SMTP DATA carries it (RFC 5321 4.5.2): CRLF line ends, dot-stuffed, closed
with ".\r\n". Apart from the connection code, so that a builder process can make these bytes
without loading a client."""

from __future__ import annotations

import re
from dataclasses import dataclass

_LEADING_PERIOD = re.compile(rb"(?m)^\.")
END_OF_DATA = b".\r\n"  # after the message's own last CRLF


@dataclass(frozen=True, slots=True)
class Stuffed:
    """A message as DATA puts it on the wire: CRLF line ends, every line that starts with "."
    given a second one (RFC 5321 4.5.2), and the closing ".\r\n". A message built once and
    sent many times is stuffed once, not by the client library on every hand-off."""

    data: bytes
    size: int  # the message's own length: RFC 1870 SIZE, as sendmail() would declare it

    @classmethod
    def of(cls, message: bytes) -> Stuffed:
        """The general way, byte for byte what aiosmtplib's sendmail() writes. A message we
        built (the outbox's) has only CRLF line ends and seldom a line that starts with ".":
        three counts and a search find that, where the regular expressions rewrite it all."""
        crs = message.count(b"\r")
        if crs == message.count(b"\n") == message.count(b"\r\n"):  # no lone CR or LF
            normalized = message if message.endswith(b"\r\n") else message + b"\r\n"
        else:
            # Imported here, not above: the client library brings asyncio and ssl (2.5 MB)
            # to a builder process, which only ever splices.
            from aiosmtplib.protocol import normalize_message_line_endings

            normalized = normalize_message_line_endings(message)
        return cls(stuff_lines(normalized) + END_OF_DATA, len(normalized))

    def message(self) -> bytes:
        """The message again, for a hand-off through sendmail(), which stuffs it itself."""
        return _LEADING_PERIOD.sub(b"", self.data[:-3])


def stuff_lines(data: bytes) -> bytes:
    """Dot-stuff whole CRLF lines (RFC 5321 4.5.2): each line that starts with "." gets another."""
    if data[:1] != b"." and b"\n." not in data:
        return data  # the common case, found without the regex machinery
    return _LEADING_PERIOD.sub(b"..", data)
