"""Typed dependencies: the request's session (committed once, at the edge), settings, context.
The ones that only read the app's state are `async def`: FastAPI runs a plain `def`
dependency in its thread pool, a thread hop per request for nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlmodel import Session

from ..config import Settings
from ..context import AppContext, Requester
from ..db import GroupCommit, transaction


def get_session(request: Request) -> Iterator[Session]:
    """One transaction per request: commit after the handler, before the response leaves,
    then wake the outbox sender for any mail the request queued."""
    with transaction(request.app.state.engine) as session:
        yield session
    request.app.state.outbox.notify()


async def get_writes(request: Request) -> GroupCommit:
    """The app's group commit, for a busy write that can share its transaction with others
    (db.GroupCommit) and answers after the commit."""
    return request.app.state.writes  # type: ignore[no-any-return]


async def get_context(request: Request) -> AppContext:
    """The app's context."""
    return request.app.state.ctx  # type: ignore[no-any-return]


async def get_settings(request: Request) -> Settings:
    """The app's settings."""
    return request.app.state.ctx.settings  # type: ignore[no-any-return]


async def get_requester(request: Request) -> Requester:
    """Who is asking: the client's address and user agent, web or API."""
    source = "api" if request.url.path.startswith("/api/") else "web"
    return Requester(
        ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
        source=source,
    )


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
WritesDep = Annotated[GroupCommit, Depends(get_writes)]
ContextDep = Annotated[AppContext, Depends(get_context)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
RequesterDep = Annotated[Requester, Depends(get_requester)]
