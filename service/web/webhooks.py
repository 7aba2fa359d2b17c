"""The relays' webhooks: POST /webhooks/ses (Amazon SES through SNS) and POST
/webhooks/postmark, each off (404) until its settings are set, checked, then handed to
bounces.webhooks in one transaction.

The SNS verifier (its HTTP client and certificate cache) is made when the app starts, by this
router's lifespan, and kept on `app.state.sns_verifier`; a test replaces it with an
`SnsVerifier(httpx.Client(transport=httpx.MockTransport(...)))` serving its own certificate.
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from ..bounces import webhooks
from ..config import Settings
from ..db import in_thread
from .errors import EDGE_RESPONSES, Problem

log = logging.getLogger(__name__)
REALM = 'Basic realm="broadside-webhooks"'
ERROR_STATUS: dict[type[webhooks.WebhookError], int] = {
    webhooks.MalformedWebhook: 400,
    webhooks.UntrustedWebhook: 401,
    webhooks.WebhookUnavailable: 503,
}
RETRY_AFTER = "60"  # seconds: SNS and Postmark retry on their own schedules anyway


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Make the SNS verifier at start-up; close its HTTP client at shutdown."""
    verifier = webhooks.SnsVerifier(httpx.Client(follow_redirects=False))
    app.state.sns_verifier = verifier
    try:
        yield
    finally:
        verifier.close()


RESPONSES: dict[int | str, dict[str, Any]] = {
    **EDGE_RESPONSES,
    400: {"model": Problem, "description": "the body is not a message this webhook takes"},
    401: {"model": Problem, "description": "not authenticated; nothing was changed"},
    404: {"model": Problem, "description": "this webhook is off (its settings are not set)"},
    503: {"model": Problem, "description": "Amazon or the database did not answer; retry"},
}
router = APIRouter(prefix="/webhooks", tags=["webhooks"], responses=RESPONSES, lifespan=lifespan)


class Received(BaseModel):
    """What the call did: recorded (with how many reports), ignored, subscribed, unsubscribed."""

    status: str
    recorded: int


def _body_schema(description: str, required: list[str], **fields: Any) -> dict[str, Any]:
    """The documented request body: a JSON object with these fields (more are allowed)."""
    schema = {"type": "object", "required": required, "properties": fields}
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": {"schema": schema}},
        }
    }


TEXT = {"type": "string"}
SNS_BODY = _body_schema(
    "An SNS message (SNS posts it as text/plain).",
    ["Type", "MessageId", "TopicArn", "Message", "Timestamp", "Signature", "SigningCertURL"],
    Type={"type": "string", "enum": list(webhooks.SIGNED_KEYS)},
    MessageId=TEXT,
    TopicArn=TEXT,
    Subject=TEXT,
    Message={"type": "string", "description": "the SES notification, as JSON text"},
    Timestamp=TEXT,
    SignatureVersion={"type": "string", "enum": list(webhooks.SIGNATURE_HASHES)},
    Signature=TEXT,
    SigningCertURL=TEXT,
    SubscribeURL=TEXT,
    Token=TEXT,
)
POSTMARK_BODY = _body_schema(
    "A Postmark Bounce, SpamComplaint or SubscriptionChange webhook (others are ignored).",
    ["RecordType"],
    RecordType=TEXT,
    Type=TEXT,
    Email=TEXT,
    Recipient=TEXT,
    Details=TEXT,
    SuppressSending={"type": "boolean"},
    SuppressionReason=TEXT,
)


@router.post(
    "/ses",
    response_model=Received,
    summary="Amazon SES notifications through SNS",
    openapi_extra=SNS_BODY,
)
async def ses_notification(request: Request) -> Received | JSONResponse:
    """Amazon SES bounce and complaint notifications through an SNS topic listed in
    SES_TOPIC_ARNS: each message's signature is checked against Amazon's certificate, and a
    subscription confirmation is confirmed. A hard bounce or a complaint stops mail to the
    reader at once."""
    if not _settings(request).ses_topic_arns:
        return _problem(404, "Not found.")
    body = await request.body()
    verifier = request.app.state.sns_verifier
    try:
        done = await in_thread(
            request.app.state.engine,
            webhooks.receive_ses,
            request.app.state.ctx,
            verifier,
            body,
        )
    except webhooks.WebhookError as exc:
        return _refusal("ses", exc)
    return Received(status=done.status, recorded=done.recorded)


@router.post(
    "/postmark",
    response_model=Received,
    summary="Postmark bounce, spam complaint and subscription change webhooks",
    openapi_extra=POSTMARK_BODY,
)
async def postmark_event(request: Request) -> Received | JSONResponse:
    """Postmark bounce, spam complaint and subscription change webhooks, with HTTP Basic
    credentials POSTMARK_WEBHOOK_USER and POSTMARK_WEBHOOK_PASSWORD."""
    settings = _settings(request)
    if not settings.postmark_webhook_user or not settings.postmark_webhook_password:
        return _problem(404, "Not found.")
    if not _postmark_allows(settings, request.headers.get("authorization")):
        log.warning("refused a Postmark webhook call without the right credentials")
        return _problem(401, "Not authenticated.", {"WWW-Authenticate": REALM})
    body = await request.body()
    try:
        done = await in_thread(
            request.app.state.engine, webhooks.receive_postmark, request.app.state.ctx, body
        )
    except webhooks.WebhookError as exc:
        return _refusal("postmark", exc)
    return Received(status=done.status, recorded=done.recorded)


def _settings(request: Request) -> Settings:
    return request.app.state.ctx.settings  # type: ignore[no-any-return]


def _postmark_allows(settings: Settings, authorization: str | None) -> bool:
    """HTTP Basic credentials equal to the settings', compared in constant time (both parts
    always compared, so the answer's timing does not say which one was wrong)."""
    user, password = _basic_credentials(authorization) or ("", "")
    expected_password = settings.postmark_webhook_password
    user_ok = secrets.compare_digest(user.encode(), (settings.postmark_webhook_user or "").encode())
    password_ok = secrets.compare_digest(
        password.encode(),
        expected_password.get_secret_value().encode() if expected_password else b"",
    )
    return bool(user) and user_ok and password_ok


def _basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    """The user and password of an `Authorization: Basic …` header (RFC 7617), or None."""
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    return (user, password) if colon else None


def _refusal(source: str, exc: webhooks.WebhookError) -> JSONResponse:
    status = ERROR_STATUS.get(type(exc), 400)
    log.warning("refused a %s webhook call (%s): %s", source, status, exc)
    headers = {"Retry-After": RETRY_AFTER} if status == 503 else None
    return _problem(status, str(exc), headers)


def _problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)
