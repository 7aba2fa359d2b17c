"""The reader operations as JSON under /api/v1, documented in the OpenAPI schema at /docs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import APIRouter, Request, status
from pydantic import BaseModel, ConfigDict, Field

from .. import feedback, subscriptions
from ..readers import Cadence
from .deps import ContextDep, RequesterDep, SessionDep, WritesDep
from .errors import EDGE_RESPONSES

router = APIRouter(prefix="/api/v1", tags=["readers"], responses=EDGE_RESPONSES)


# feedback.CATEGORIES is the one list; as a Literal the schema shows it as an enum, inline.
# mypy cannot read a Literal built at run time, so it checks the field as a str.
if TYPE_CHECKING:
    Category = str
else:
    Category = Literal[tuple(feedback.CATEGORIES)]
# The hidden form field only bots fill; the domain drops their request without a trace.
BotTrap = Annotated[str | None, Field(description="leave empty (bot trap)")]


class Strict(BaseModel):
    """A request body that refuses unknown fields."""

    model_config = ConfigDict(extra="forbid")


class SubscriptionIn(Strict):
    """A subscribe request."""

    email: str = Field(max_length=320, examples=["reader@example.com"])
    name: str | None = Field(default=None, max_length=200, examples=["Ada"])
    timezone: str | None = Field(
        default=None,
        max_length=200,
        examples=["Europe/Berlin"],
        description="the reader's IANA time zone; missing or unknown: the service's TIMEZONE",
    )
    cadence: Cadence = Field(
        default=Cadence.daily, description="each day's column, or a weekly digest"
    )
    digest_weekday: int = Field(
        default=7, ge=1, le=7, description="the weekly digest's ISO weekday: 1 Monday … 7 Sunday"
    )
    website: BotTrap = None


class TokenIn(Strict):
    """A request carrying a link's token."""

    token: str = Field(min_length=1, max_length=400)


class FeedbackIn(Strict):
    """A feedback message."""

    category: Category
    message: str = Field(min_length=1, max_length=20_000)
    reply_to: str | None = Field(default=None, max_length=320)
    token: str | None = Field(
        default=None, max_length=400, description="from a mail's feedback link"
    )
    website: BotTrap = None


class Accepted(BaseModel):
    """A request taken in; what happens next comes by mail."""

    status: str
    message: str


class SubscriberState(BaseModel):
    """A reader's address and status after the request."""

    email: str
    status: str


@router.post(
    "/subscriptions",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Accepted,
    responses={
        422: {"description": "invalid address or name"},
        429: {"description": "rate limited"},
    },
)
async def create_subscription(
    request: Request, body: SubscriptionIn, writes: WritesDep, ctx: ContextDep, who: RequesterDep
) -> Accepted:
    """Start a double opt-in. The answer is the same whether or not the address is known.
    The time zone, cadence and weekday are kept for a new reader only; a known reader's
    choices change only on their preferences page."""
    await writes.run(
        subscriptions.subscribe,
        ctx,
        email=body.email,
        name=body.name,
        who=who,
        honeypot=body.website,
        timezone=body.timezone,
        cadence=body.cadence,
        digest_weekday=body.digest_weekday,
    )
    request.app.state.outbox.notify()
    return Accepted(
        status="pending",
        message="If the address can receive mail, a confirmation link is on its way.",
    )


@router.post(
    "/confirmations",
    response_model=SubscriberState,
    responses={400: {"description": "invalid link"}, 410: {"description": "expired or used"}},
)
def confirm(
    body: TokenIn, session: SessionDep, ctx: ContextDep, who: RequesterDep
) -> SubscriberState:
    """Confirm a subscription with the token from the confirmation mail."""
    subscriber = subscriptions.confirm(session, ctx, token=body.token, who=who)
    return SubscriberState(email=subscriber.email, status=subscriber.status)


@router.post(
    "/unsubscriptions",
    response_model=SubscriberState,
    responses={400: {"description": "invalid link"}},
)
def unsubscribe(
    body: TokenIn, session: SessionDep, ctx: ContextDep, who: RequesterDep
) -> SubscriberState:
    """Unsubscribe with the token from a mail's unsubscribe link; repeating it is harmless."""
    subscriber = subscriptions.unsubscribe(session, ctx, token=body.token, who=who)
    return SubscriberState(email=subscriber.email, status=subscriber.status)


@router.post(
    "/feedback",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Accepted,
    responses={422: {"description": "invalid field"}, 429: {"description": "rate limited"}},
)
def send_feedback(
    body: FeedbackIn, session: SessionDep, ctx: ContextDep, who: RequesterDep
) -> Accepted:
    """Tell us about a problem ("having issues? let us know")."""
    feedback.submit(
        session,
        ctx,
        category=body.category,
        message_text=body.message,
        reply_to=body.reply_to,
        token=body.token,
        honeypot=body.website,
        who=who,
    )
    return Accepted(status="received", message="Thank you. We read every message.")
