"""Each reader's copy of a send's mail, from the mail prepared once and a kit of what the
copies share; and the builder process that makes them beside the worker (`python -m
service.delivery.builder`). The process imports this module alone, and what unpickling the
kit and the mail brings (the splice, the token signer and the DKIM signer): not the settings,
the database, the SMTP client or the web stack, so that it costs a send tens of megabytes
less than a copy of the worker would."""

from __future__ import annotations

import os
import pickle
import signal
import struct
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:  # only named here: the objects arrive pickled, and bring their modules
    from ..mail.dkim import DkimSigner
    from ..mail.splice import PreparedMail, ReaderValues
    from ..mail.wire import Stuffed
    from ..tokens import Links

# One reader to build for: subscriber id, address, name.
Reader = tuple[int, str, str]
# One reader's built copy, or why it cannot be built (an address or a name we cannot put in
# a header): exactly one of the two is None.
Built: TypeAlias = "tuple[Stuffed | None, str | None]"

_LENGTH = struct.Struct(">I")  # each frame on the pipes: its length, then a pickle


@dataclass(frozen=True)
class Kit:
    """What every reader's copy of one send shares besides the mail: how to sign their links
    and the message, and how their Message-ID is made."""

    links: Links
    signer: DkimSigner | None  # None: DKIM not configured, mail goes out unsigned
    mail_domain: str  # the Message-ID's right-hand side
    kind: str  # the Message-ID's start: column or digest
    message_domain: str  # the Message-ID's middle: stable per send, so per reader across retries
    token_expiry: int  # every link of the send expires together

    def values(self, subscriber_id: int, email: str, name: str) -> ReaderValues:
        """One reader's values for the splice: their name, their own signed links, a
        Message-ID that stays the same across retries (so a receiver can spot a duplicate)."""
        links, expiry = self.links, self.token_expiry
        return {
            "to": email,
            "name": name,
            "unsubscribe_url": links.unsubscribe_url(subscriber_id, expiry),
            "feedback_url": links.feedback_url(subscriber_id, expiry),
            "preferences_url": links.preferences_url(subscriber_id, expiry),
            "message_id": f"<{self.kind}.{self.message_domain}.{subscriber_id}@{self.mail_domain}>",
            "unsubscribe_mailto": links.unsubscribe_mailto(subscriber_id),
            "signer": self.signer,
        }


def build(kit: Kit, mail: PreparedMail, readers: Sequence[Reader]) -> list[Built]:
    """Each reader's copy of `mail` as SMTP DATA carries it, signed when configured."""
    built: list[Built] = []
    for subscriber_id, email, name in readers:
        try:
            built.append((mail.stuffed(**kit.values(subscriber_id, email, name)), None))
        except ValueError as exc:  # an address or name we cannot put in a header
            built.append((None, str(exc)))
    return built


def frame(value: object) -> bytes:
    """`value` as one frame on a builder's pipe."""
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


def frame_length(header: bytes) -> int:
    """The length of the frame whose first bytes are `header` (LENGTH_SIZE of them)."""
    (length,) = _LENGTH.unpack(header)
    return int(length)


LENGTH_SIZE = _LENGTH.size


def _read(pipe: IO[bytes]) -> Any:
    """The next frame's value, or None at the end of the pipe (the worker is done, or gone)."""
    header = pipe.read(LENGTH_SIZE)
    if len(header) < LENGTH_SIZE:
        return None
    length = frame_length(header)
    data = pipe.read(length)
    if len(data) < length:
        return None
    return pickle.loads(data)


def main() -> None:
    """Read the kit and the mail, then each chunk of readers; answer each chunk with its
    built copies, in order. Ends when the worker closes the pipe, or dies."""
    # Ctrl-C in a terminal reaches the whole process group, and a service manager's SIGTERM
    # the whole cgroup: the worker decides when to stop, and closes the pipe (or dies, which
    # closes it too).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _sign_without_lookups()
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print cannot break a frame
    requests = sys.stdin.buffer
    started = _read(requests)
    if started is None:
        return
    kit, mail = started
    try:
        while (readers := _read(requests)) is not None:
            replies.write(frame(build(kit, mail, readers)))
            replies.flush()
    except BrokenPipeError:  # the worker was killed: nobody is left to build for
        os._exit(0)  # without flushing again into the broken pipe on the way out


def _sign_without_lookups() -> None:
    """dkimpy imports its DNS plug-in, and with it dnspython and ssl (~5 MB), to look up keys
    when it verifies; a builder only signs. A plug-in in the module cache before dkimpy's
    first import (the kit's unpickling) is the one it takes, and it refuses every lookup."""

    def get_txt(name: bytes, timeout: float = 5) -> bytes | None:
        raise RuntimeError(f"a builder process signs; it does not look up {name!r} in the DNS")

    plugin = types.ModuleType("dkim.dnsplug", "DKIM key lookups: none in a builder process")
    plugin.get_txt = get_txt  # type: ignore[attr-defined]
    sys.modules.setdefault("dkim.dnsplug", plugin)


if __name__ == "__main__":
    main()
