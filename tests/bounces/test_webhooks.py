"""The relays' webhooks end to end: SES notifications through SNS (signed with a key whose
certificate "Amazon" serves) and Postmark calls (HTTP Basic) suppress, score or leave the
reader as the report says; anything not authenticated is refused and changes nothing."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from service.bounces.webhooks import SnsVerifier
from service.context import AppContext
from service.models import (
    Bounce,
    BounceKind,
    Delivery,
    Subscriber,
    SubscriberStatus,
    SuppressionReason,
)
from service.subscriptions import suppression_of
from tests.certificates import self_signed
from tests.daily import start_seed_send
from tests.helpers import add_reader, reader

TOPIC = "arn:aws:sns:eu-west-1:123456789012:broadside-bounces"
SNS_HOST = "sns.eu-west-1.amazonaws.com"
CERT_URL = f"https://{SNS_HOST}/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem"
SUBSCRIBE_URL = (
    f"https://{SNS_HOST}/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=2336412f37fb687f"
)
POSTMARK_USER, POSTMARK_PASSWORD = "postmark", "a-long-webhook-password"
BOUNCE_DOMAIN = "bounces.news.example.com"
# Signed, as SNS signs: each message type's keys, in this order (AWS, "Verifying the
# signatures of Amazon SNS messages"); written out here, not taken from the service.
SIGNED = {
    "Notification": ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"],
    "SubscriptionConfirmation": [
        "Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type",
    ],
}  # fmt: skip


class Amazon:
    """SNS's side: a signing key, its certificate served at CERT_URL, a SubscribeURL that
    answers, and every request that reached it."""

    def __init__(self, key: rsa.RSAPrivateKey, certificate: bytes) -> None:
        self.key, self.certificate = key, certificate
        self.requests: list[httpx.Request] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if str(request.url) == CERT_URL:
            return httpx.Response(200, content=self.certificate)
        if request.url.host == SNS_HOST and request.url.params.get("Action") == (
            "ConfirmSubscription"
        ):
            return httpx.Response(200, content=b"<ConfirmSubscriptionResponse/>")
        return httpx.Response(404)

    def sign(self, fields: dict[str, str], version: str = "2") -> dict[str, str]:
        """The message as SNS posts it: signed with SHA1 (version 1) or SHA256 (2)."""
        signed = dict(fields, SignatureVersion=version, SigningCertURL=CERT_URL)
        text = "".join(f"{k}\n{signed[k]}\n" for k in SIGNED[signed["Type"]] if k in signed)
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = self.key.sign(text.encode(), padding.PKCS1v15(), algorithm)
        signed["Signature"] = base64.b64encode(signature).decode()
        return signed

    def fetched(self) -> list[str]:
        return [str(r.url) for r in self.requests]


@pytest.fixture(scope="module")
def signing_key() -> tuple[rsa.RSAPrivateKey, bytes]:
    """A key and its self-signed certificate (PEM), made once for the module."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key, self_signed(key, "sns.amazonaws.com")


@pytest.fixture
def amazon(signing_key: tuple[rsa.RSAPrivateKey, bytes]) -> Amazon:
    return Amazon(*signing_key)


def with_amazon(client: TestClient, amazon: Amazon) -> TestClient:
    """The app's SNS verifier, talking to the test's Amazon instead of the internet."""
    http = httpx.Client(transport=httpx.MockTransport(amazon.handle))
    client.app.state.sns_verifier = SnsVerifier(http)  # type: ignore[attr-defined]
    return client


@pytest.fixture
def ses_client(make_client: Callable[..., TestClient], amazon: Amazon) -> TestClient:
    return with_amazon(make_client(ses_topic_arns=TOPIC), amazon)


@pytest.fixture
def postmark_client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(
        postmark_webhook_user=POSTMARK_USER, postmark_webhook_password=POSTMARK_PASSWORD
    )


# SES notifications -------------------------------------------------------------------------


def ses_bounce(
    email: str,
    bounce_type: str = "Permanent",
    status: str = "5.1.1",
    diagnostic: str = "smtp; 550 5.1.1 user unknown",
    source: str = "bounces@news.example.com",
    sub_type: str = "General",
) -> dict[str, Any]:
    return {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": bounce_type,
            "bounceSubType": sub_type,
            "bouncedRecipients": [
                {
                    "emailAddress": email,
                    "action": "failed",
                    "status": status,
                    "diagnosticCode": diagnostic,
                }
            ],
            "timestamp": "2016-02-04T06:00:03.000Z",
            "feedbackId": "0102015c-feedback",
        },
        "mail": {
            "source": source,
            "messageId": "0102015c-message",
            "destination": [email],
            "timestamp": "2016-02-04T06:00:01.000Z",
        },
    }


def ses_complaint(email: str) -> dict[str, Any]:
    return {
        "notificationType": "Complaint",
        "complaint": {
            "complainedRecipients": [{"emailAddress": email}],
            "complaintFeedbackType": "abuse",
            "timestamp": "2016-02-04T09:00:00.000Z",
        },
        "mail": {"source": "bounces@news.example.com", "messageId": "0102015c-message"},
    }


def notification(ses: dict[str, Any], message_id: str = "e3c1a2b4") -> dict[str, str]:
    return {
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": TOPIC,
        "Message": json.dumps(ses),
        "Timestamp": "2016-02-04T06:00:04.000Z",
    }


def post_sns(client: TestClient, message: dict[str, str]) -> httpx.Response:
    """POST as SNS does: JSON in a text/plain body, no Origin."""
    return client.post(
        "/webhooks/ses",
        content=json.dumps(message),
        headers={
            "Content-Type": "text/plain; charset=UTF-8",
            "x-amz-sns-message-type": message.get("Type", ""),
        },
    )


def bounces(engine: Engine) -> list[Bounce]:
    with Session(engine) as session:
        return list(session.exec(select(Bounce).order_by(col(Bounce.id))))


def suppressed(client: TestClient, engine: Engine, email: str) -> SuppressionReason | None:
    ctx: AppContext = client.app.state.ctx  # type: ignore[attr-defined]
    with Session(engine) as session:
        return suppression_of(session, ctx, email)


def test_ses_permanent_bounce_suppresses_the_reader(
    ses_client: TestClient, amazon: Amazon, engine: Engine
) -> None:
    add_reader(engine, "ada@example.com")

    answer = post_sns(ses_client, amazon.sign(notification(ses_bounce("Ada@Example.com"))))

    assert answer.status_code == 200, answer.text
    assert answer.json() == {"status": "recorded", "recorded": 1}
    assert reader(engine, "ada@example.com").status == SubscriberStatus.bounced
    assert suppressed(ses_client, engine, "ada@example.com") == SuppressionReason.bounced
    [bounce] = bounces(engine)
    assert (bounce.source, bounce.kind, bounce.status) == ("ses", BounceKind.hard, "5.1.1")
    assert bounce.diagnostic == "smtp; 550 5.1.1 user unknown"
    assert bounce.subscriber_id == reader(engine, "ada@example.com").id
    assert bounce.raw is None  # it named its reader: nothing kept for the operator to read


def test_ses_transient_bounces_suppress_only_at_the_soft_bounce_limit(
    ses_client: TestClient, amazon: Amazon, engine: Engine
) -> None:
    add_reader(engine, "ada@example.com")
    full = ses_bounce("ada@example.com", "Transient", "4.2.2", "smtp; 452 4.2.2 mailbox full")

    for attempt in range(2):
        answer = post_sns(ses_client, amazon.sign(notification(full, f"soft-{attempt}")))
        assert answer.status_code == 200, answer.text
    assert reader(engine, "ada@example.com").status == SubscriberStatus.active
    assert suppressed(ses_client, engine, "ada@example.com") is None

    post_sns(ses_client, amazon.sign(notification(full, "soft-3")))  # SOFT_BOUNCE_LIMIT is 3

    assert reader(engine, "ada@example.com").status == SubscriberStatus.bounced
    assert [b.kind for b in bounces(engine)] == [BounceKind.soft] * 3


def test_an_sns_notification_delivered_twice_counts_once(
    ses_client: TestClient, amazon: Amazon, engine: Engine
) -> None:
    add_reader(engine, "ada@example.com")
    full = ses_bounce("ada@example.com", "Transient", "4.2.2", "smtp; 452 4.2.2 mailbox full")
    signed = amazon.sign(notification(full, "the-same-message"))
    for _ in range(3):  # SNS retries until it hears 2xx: at least once, maybe more
        assert post_sns(ses_client, signed).status_code == 200
    assert reader(engine, "ada@example.com").status == SubscriberStatus.active
    assert len(bounces(engine)) == 1


def test_ses_complaint_stops_mail_to_the_reader_at_once(
    ses_client: TestClient, amazon: Amazon, engine: Engine
) -> None:
    add_reader(engine, "ada@example.com")

    answer = post_sns(ses_client, amazon.sign(notification(ses_complaint("ada@example.com"))))

    assert answer.status_code == 200, answer.text
    ada = reader(engine, "ada@example.com")
    assert ada.status == SubscriberStatus.complained
    assert ada.bounce_reason is not None and "feedback-type: abuse" in ada.bounce_reason
    assert suppressed(ses_client, engine, "ada@example.com") == SuppressionReason.complained
    assert [b.kind for b in bounces(engine)] == [BounceKind.complaint]


def test_ses_policy_refusal_leaves_the_reader_alone(
    ses_client: TestClient, amazon: Amazon, engine: Engine
) -> None:
    add_reader(engine, "ada@example.com")
    refused = ses_bounce("ada@example.com", status="5.7.1", diagnostic="smtp; 550 5.7.1 spam")

    answer = post_sns(ses_client, amazon.sign(notification(refused)))

    assert answer.status_code == 200, answer.text
    assert reader(engine, "ada@example.com").status == SubscriberStatus.active
    assert suppressed(ses_client, engine, "ada@example.com") is None
    [bounce] = bounces(engine)
    assert (bounce.kind, bounce.status) == (BounceKind.policy, "5.7.1")


def test_ses_delivery_notification_changes_nothing(
    ses_client: TestClient, amazon: Amazon, engine: Engine
) -> None:
    add_reader(engine, "ada@example.com")
    delivered = {"notificationType": "Delivery", "mail": {"source": "b@news.example.com"}}

    answer = post_sns(ses_client, amazon.sign(notification(delivered)))

    assert answer.status_code == 200 and answer.json()["status"] == "ignored"
    assert bounces(engine) == []
    assert reader(engine, "ada@example.com").status == SubscriberStatus.active


def test_ses_bounce_for_an_unknown_address_is_kept_whole_for_the_operator(
    ses_client: TestClient, amazon: Amazon, engine: Engine
) -> None:
    body = amazon.sign(notification(ses_bounce("stranger@example.org")))

    assert post_sns(ses_client, body).status_code == 200

    [bounce] = bounces(engine)
    assert bounce.subscriber_id is None and bounce.email == "stranger@example.org"
    assert bounce.raw == json.dumps(body).encode()


def test_ses_bounce_is_attributed_by_its_verp_return_path(
    make_client: Callable[..., TestClient], amazon: Amazon, engine: Engine
) -> None:
    client = with_amazon(make_client(ses_topic_arns=TOPIC, bounce_domain=BOUNCE_DOMAIN), amazon)
    ctx: AppContext = client.app.state.ctx  # type: ignore[attr-defined]
    ada = add_reader(engine, "ada@example.com")
    start_seed_send(engine, ctx.settings)
    with Session(engine) as session:
        delivery = session.exec(select(Delivery).where(Delivery.subscriber_id == ada)).one()
    assert delivery.id is not None
    # The relay names the address the mail was forwarded to; the return path names Ada.
    forwarded = ses_bounce("ada.old@forwarder.example.net", source=ctx.return_path(delivery.id))

    answer = post_sns(client, amazon.sign(notification(forwarded)))

    assert answer.status_code == 200, answer.text
    [bounce] = bounces(engine)
    assert (bounce.subscriber_id, bounce.delivery_id) == (ada, delivery.id)
    assert reader(engine, "ada@example.com").status == SubscriberStatus.bounced


def test_ses_subscription_confirmation_visits_the_subscribe_url(
    ses_client: TestClient, amazon: Amazon, engine: Engine
) -> None:
    confirmation = {
        "Type": "SubscriptionConfirmation",
        "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        "Token": "2336412f37fb687f",
        "TopicArn": TOPIC,
        "Message": f"You have chosen to subscribe to the topic {TOPIC}.",
        "SubscribeURL": SUBSCRIBE_URL,
        "Timestamp": "2016-02-04T06:00:00.000Z",
    }

    answer = post_sns(ses_client, amazon.sign(confirmation))

    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "subscribed"
    assert amazon.fetched() == [CERT_URL, SUBSCRIBE_URL]
    assert bounces(engine) == []


@pytest.mark.parametrize("version", ["1", "2"])
def test_both_sns_signature_versions_verify(
    ses_client: TestClient, amazon: Amazon, engine: Engine, version: str
) -> None:
    add_reader(engine, "ada@example.com")

    message = amazon.sign(notification(ses_bounce("ada@example.com")), version)

    assert post_sns(ses_client, message).status_code == 200
    assert reader(engine, "ada@example.com").status == SubscriberStatus.bounced


def test_the_signing_certificate_is_fetched_once(
    ses_client: TestClient, amazon: Amazon, engine: Engine
) -> None:
    for n in range(3):
        message = amazon.sign(notification(ses_bounce(f"r{n}@example.org"), f"m-{n}"))
        assert post_sns(ses_client, message).status_code == 200

    assert amazon.fetched() == [CERT_URL]


def assert_refused_and_nothing_changed(answer: httpx.Response, engine: Engine) -> None:
    assert answer.status_code == 401, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert bounces(engine) == []
    assert reader(engine, "ada@example.com").status == SubscriberStatus.active


def test_a_tampered_ses_message_is_refused_and_changes_nothing(
    ses_client: TestClient, amazon: Amazon, engine: Engine
) -> None:
    add_reader(engine, "ada@example.com")
    message = amazon.sign(notification(ses_bounce("ada@example.com", "Transient", "4.2.2")))
    message["Message"] = message["Message"].replace("Transient", "Permanent")  # one byte

    assert_refused_and_nothing_changed(post_sns(ses_client, message), engine)


@pytest.mark.parametrize(
    "cert_url",
    [
        "https://evil.example.com/SimpleNotificationService-0123.pem",
        "https://sns.eu-west-1.amazonaws.com.evil.example.com/cert.pem",
        f"http://{SNS_HOST}/SimpleNotificationService-0123.pem",
        f"https://{SNS_HOST}/cert.txt",
        f"https://user@{SNS_HOST}/cert.pem",
        f"https://{SNS_HOST}/cert\x00.pem",
        f"https://{SNS_HOST}:8443/cert.pem",
    ],
)
def test_a_certificate_outside_sns_is_refused_without_fetching_it(
    ses_client: TestClient, amazon: Amazon, engine: Engine, cert_url: str
) -> None:
    add_reader(engine, "ada@example.com")
    message = amazon.sign(notification(ses_bounce("ada@example.com")))
    message["SigningCertURL"] = cert_url

    assert_refused_and_nothing_changed(post_sns(ses_client, message), engine)
    assert amazon.requests == []


def test_a_topic_not_in_ses_topic_arns_is_refused(
    ses_client: TestClient, amazon: Amazon, engine: Engine
) -> None:
    add_reader(engine, "ada@example.com")
    other = dict(notification(ses_bounce("ada@example.com")), TopicArn=TOPIC + "-other")

    assert_refused_and_nothing_changed(post_sns(ses_client, amazon.sign(other)), engine)


def test_an_unsigned_ses_message_is_refused(
    ses_client: TestClient, amazon: Amazon, engine: Engine
) -> None:
    add_reader(engine, "ada@example.com")
    unsigned = dict(notification(ses_bounce("ada@example.com")), SigningCertURL=CERT_URL)

    assert_refused_and_nothing_changed(post_sns(ses_client, unsigned), engine)


def test_a_subscription_confirmation_with_a_subscribe_url_outside_sns_is_not_visited(
    ses_client: TestClient, amazon: Amazon
) -> None:
    confirmation = {
        "Type": "SubscriptionConfirmation",
        "MessageId": "165545c9",
        "Token": "2336412f37fb687f",
        "TopicArn": TOPIC,
        "Message": "Subscribe?",
        "SubscribeURL": "https://attacker.example.com/?Action=ConfirmSubscription",
        "Timestamp": "2016-02-04T06:00:00.000Z",
    }

    answer = post_sns(ses_client, amazon.sign(confirmation))

    assert answer.status_code == 401
    assert amazon.fetched() == [CERT_URL]


# Postmark ----------------------------------------------------------------------------------


def post_postmark(
    client: TestClient, payload: dict[str, Any], auth: tuple[str, str] | None = None
) -> httpx.Response:
    return client.post(
        "/webhooks/postmark",
        content=json.dumps(payload),
        headers={"Content-Type": "application/json"},
        auth=auth or (POSTMARK_USER, POSTMARK_PASSWORD),
    )


def postmark_bounce(email: str, kind: str = "HardBounce") -> dict[str, Any]:
    return {
        "RecordType": "Bounce",
        "MessageStream": "outbound",
        "ID": 4323372036854775807,
        "Type": kind,
        "TypeCode": 1,
        "Name": "Hard bounce",
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "Description": "The server was unable to deliver your message.",
        "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
        "Email": email,
        "From": "worldview@news.example.com",
        "BouncedAt": "2016-02-04T06:00:03.9070259Z",
        "Inactive": True,
    }


def test_postmark_hard_bounce_suppresses_the_reader(
    postmark_client: TestClient, engine: Engine
) -> None:
    add_reader(engine, "ada@example.com")

    answer = post_postmark(postmark_client, postmark_bounce("ada@example.com"))

    assert answer.status_code == 200, answer.text
    assert reader(engine, "ada@example.com").status == SubscriberStatus.bounced
    assert suppressed(postmark_client, engine, "ada@example.com") == SuppressionReason.bounced
    [bounce] = bounces(engine)
    assert (bounce.source, bounce.kind, bounce.status) == ("postmark", BounceKind.hard, "5.1.1")
    assert bounce.diagnostic is not None and "does not exist" in bounce.diagnostic


@pytest.mark.parametrize(
    ("kind", "recorded"),
    [("SoftBounce", BounceKind.soft), ("Blocked", BounceKind.policy),
     ("AutoResponder", BounceKind.auto_reply), ("SomethingNew", BounceKind.unknown)],
)  # fmt: skip
def test_postmark_bounces_that_are_not_hard_leave_the_reader_alone(
    postmark_client: TestClient, engine: Engine, kind: str, recorded: BounceKind
) -> None:
    add_reader(engine, "ada@example.com")

    assert post_postmark(postmark_client, postmark_bounce("ada@example.com", kind)).is_success

    assert reader(engine, "ada@example.com").status == SubscriberStatus.active
    assert [b.kind for b in bounces(engine)] == [recorded]


def test_postmark_spam_complaint_stops_mail_to_the_reader_at_once(
    postmark_client: TestClient, engine: Engine
) -> None:
    add_reader(engine, "ada@example.com")
    complaint = dict(postmark_bounce("ada@example.com"), RecordType="SpamComplaint")
    complaint.update(Type="SpamComplaint", TypeCode=512, Details="Test spam complaint details")

    assert post_postmark(postmark_client, complaint).status_code == 200

    assert reader(engine, "ada@example.com").status == SubscriberStatus.complained
    assert suppressed(postmark_client, engine, "ada@example.com") == SuppressionReason.complained


@pytest.mark.parametrize(
    ("reason", "status"),
    [
        ("ManualSuppression", SubscriberStatus.unsubscribed),
        ("HardBounce", SubscriberStatus.bounced),
        ("SpamComplaint", SubscriberStatus.complained),
    ],
)
def test_postmark_subscription_change_stops_mail_for_its_reason(
    postmark_client: TestClient, engine: Engine, reason: str, status: SubscriberStatus
) -> None:
    add_reader(engine, "ada@example.com")
    change = {
        "RecordType": "SubscriptionChange",
        "MessageID": "00000000-0000-0000-0000-000000000000",
        "ServerID": 23,
        "MessageStream": "broadcast",
        "ChangedAt": "2016-02-04T10:53:34.416071Z",
        "Recipient": "ada@example.com",
        "Origin": "Recipient",
        "SuppressSending": True,
        "SuppressionReason": reason,
    }

    assert post_postmark(postmark_client, change).status_code == 200

    assert reader(engine, "ada@example.com").status == status


def test_postmark_reactivation_and_other_records_change_nothing(
    postmark_client: TestClient, engine: Engine
) -> None:
    add_reader(engine, "ada@example.com")
    calls: list[dict[str, Any]] = [
        {"RecordType": "SubscriptionChange", "Recipient": "ada@example.com",
         "SuppressSending": False, "SuppressionReason": None},
        {"RecordType": "Delivery", "Recipient": "ada@example.com", "Details": "Test"},
        {"RecordType": "Open", "Recipient": "ada@example.com"},
    ]  # fmt: skip

    for call in calls:
        answer = post_postmark(postmark_client, call)
        assert answer.status_code == 200 and answer.json()["status"] == "ignored"

    assert bounces(engine) == []
    assert reader(engine, "ada@example.com").status == SubscriberStatus.active


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Basic " + base64.b64encode(f"{POSTMARK_USER}:wrong-password".encode()).decode(),
        "Basic " + base64.b64encode(f"someone:{POSTMARK_PASSWORD}".encode()).decode(),
        "Basic " + base64.b64encode(f"{POSTMARK_USER}{POSTMARK_PASSWORD}".encode()).decode(),
        "Basic not base64!",
        f"Bearer {POSTMARK_PASSWORD}",
    ],
    ids=["none", "wrong-password", "wrong-user", "no-colon", "not-base64", "bearer"],
)
def test_postmark_without_the_right_credentials_is_refused_and_changes_nothing(
    postmark_client: TestClient, engine: Engine, authorization: str | None
) -> None:
    add_reader(engine, "ada@example.com")
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization

    answer = postmark_client.post(
        "/webhooks/postmark",
        content=json.dumps(postmark_bounce("ada@example.com")),
        headers=headers,
    )

    assert_refused_and_nothing_changed(answer, engine)
    assert answer.headers["www-authenticate"] == 'Basic realm="broadside-webhooks"'


# Off, and malformed ------------------------------------------------------------------------


def test_webhooks_are_off_until_their_settings_are_set(
    make_client: Callable[..., TestClient], amazon: Amazon, engine: Engine
) -> None:
    client = with_amazon(make_client(), amazon)
    add_reader(engine, "ada@example.com")

    ses = post_sns(client, amazon.sign(notification(ses_bounce("ada@example.com"))))
    postmark = post_postmark(client, postmark_bounce("ada@example.com"))

    assert (ses.status_code, postmark.status_code) == (404, 404)
    assert ses.headers["content-type"] == "application/json"
    assert bounces(engine) == [] and amazon.requests == []


MALFORMED = [
    b"not json",
    b"\xff\xfe",
    b"[]",
    b'"a string"',
    b"{}",
    b'{"Type": "Notification"}',
    b'{"Type": "Gossip", "Message": "hi"}',
    b'{"RecordType": 7}',
    b"[" * 60_000,  # nested past the parser's recursion limit, within the body limit
]


@pytest.mark.parametrize("body", MALFORMED, ids=range(len(MALFORMED)))
@pytest.mark.parametrize("path", ["/webhooks/ses", "/webhooks/postmark"])
def test_a_malformed_body_gets_a_client_error_not_a_server_error(
    make_client: Callable[..., TestClient], amazon: Amazon, engine: Engine, path: str, body: bytes
) -> None:
    client = with_amazon(
        make_client(
            ses_topic_arns=TOPIC,
            postmark_webhook_user=POSTMARK_USER,
            postmark_webhook_password=POSTMARK_PASSWORD,
        ),
        amazon,
    )

    answer = client.post(path, content=body, auth=(POSTMARK_USER, POSTMARK_PASSWORD))

    assert 400 <= answer.status_code < 500, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert bounces(engine) == []


def test_a_signed_notification_whose_message_is_not_json_is_a_client_error(
    ses_client: TestClient, amazon: Amazon, engine: Engine
) -> None:
    message = dict(notification({}), Message="not json")

    answer = post_sns(ses_client, amazon.sign(message))

    assert answer.status_code == 400
    assert bounces(engine) == []


def test_the_readers_table_is_untouched_by_refused_calls(
    make_client: Callable[..., TestClient], engine: Engine
) -> None:
    """A refusal in the middle of a run leaves every other reader as they were."""
    client = make_client(
        postmark_webhook_user=POSTMARK_USER, postmark_webhook_password=POSTMARK_PASSWORD
    )
    add_reader(engine, "ada@example.com")
    add_reader(engine, "bob@example.com")

    post_postmark(client, postmark_bounce("ada@example.com"), auth=("x", "y"))
    post_postmark(client, postmark_bounce("bob@example.com"))

    with Session(engine) as session:
        statuses = dict(session.exec(select(Subscriber.email, Subscriber.status)).all())
    assert statuses == {"ada@example.com": "active", "bob@example.com": "bounced"}
