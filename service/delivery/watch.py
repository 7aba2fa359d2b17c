"""Notice within seconds a send that another process started or resumed: which sends are going
out, asked in one small indexed query (ix_sends_status), compared with the last look."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlmodel import Session, col, select

from ..models import Send, SendStatus

GoingOut = dict[int, dt.datetime | None]  # send id -> when an operator last resumed it


def going_out(session: Session) -> GoingOut:
    """The sends going out now (not paused, finished or cancelled), each with when an
    operator last resumed it."""
    rows = session.exec(
        select(Send.id, Send.resumed_at).where(col(Send.status) == SendStatus.sending)
    )
    return {send_id or 0: resumed for send_id, resumed in rows}


@dataclass
class SendWatch:
    """The sends that were going out at the last look."""

    seen: GoingOut = field(default_factory=dict)

    def news(self, now_going_out: GoingOut) -> list[int]:
        """The sends going out now that were not at the last look, oldest first: started
        since, or resumed since (a paused send that was resumed between two looks has a new
        `resumed_at`). Remembers this look for the next."""
        fresh = [
            send_id
            for send_id, resumed in now_going_out.items()
            if send_id not in self.seen or self.seen[send_id] != resumed
        ]
        self.seen = dict(now_going_out)
        return sorted(fresh)
