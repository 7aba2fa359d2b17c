"""DKIM signatures (RFC 6376) on the exact bytes that go out: RSA-SHA256, and Ed25519-SHA256
(RFC 8463) beside it when configured. dkimpy does the canonicalisation and the header
selection; the signature itself is OpenSSL's, through `cryptography` (dkimpy's pure-Python RSA
costs ~6 ms a message, OpenSSL's ~0.3 ms), with the keys loaded once per process."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from dkim.canonicalization import (
    CanonicalizationPolicy,
    compress_whitespace,
    strip_trailing_whitespace,
)

if TYPE_CHECKING:  # a builder process signs without loading the settings machinery
    from ..config import DkimKey, Settings

# Signed when present, in this order. RFC 8058 requires List-Unsubscribe and its -Post to be
# covered; From is listed twice ("oversigned"), so a second From added on the way breaks it.
SIGNED = (
    b"from", b"to", b"subject", b"date", b"message-id", b"reply-to", b"mime-version",
    b"content-type", b"content-transfer-encoding", b"list-id", b"list-unsubscribe",
    b"list-unsubscribe-post", b"feedback-id",
)  # fmt: skip
RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
_BLANKS = re.compile(rb"[\t ]+")


@dataclass(frozen=True)
class _Key:
    selector: bytes
    algorithm: bytes  # the a= tag
    key: DkimKey

    def sign(self, digest: bytes) -> bytes:
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
        return self.key.sign(digest)  # RFC 8463: Ed25519 over the SHA-256 hash

    def __reduce__(self) -> tuple[object, tuple[bytes, bytes, bytes]]:
        # OpenSSL keys do not pickle: a builder process gets the key as PEM (over a pipe to
        # our own child, never to disk) and loads it once.
        pem = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return _key_from_pem, (self.selector, self.algorithm, pem)


def _key_from_pem(selector: bytes, algorithm: bytes, pem: bytes) -> _Key:
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey), "a DKIM key"
    return _Key(selector, algorithm, key)


class DkimSigner:
    """Signs messages for one domain with one or two keys; `sign` returns the message with
    its DKIM-Signature header(s) in front."""

    def __init__(self, domain: str, keys: list[_Key]) -> None:
        self.domain = domain.encode()
        self.keys = keys

    @classmethod
    def from_settings(cls, settings: Settings) -> DkimSigner | None:
        """The signer the settings ask for, or None when DKIM is not configured."""
        from ..config import load_dkim_key  # here, not above: see TYPE_CHECKING

        if settings.dkim_domain is None:
            return None
        keys: list[_Key] = []
        if settings.dkim_private_key is not None and settings.dkim_selector:
            key = load_dkim_key(settings.dkim_private_key.get_secret_value(), "rsa")
            keys.append(_Key(settings.dkim_selector.encode(), b"rsa-sha256", key))
        ed25519_selector = settings.dkim_selector_for_ed25519
        if settings.dkim_private_key_ed25519 is not None and ed25519_selector:
            key = load_dkim_key(settings.dkim_private_key_ed25519.get_secret_value(), "ed25519")
            keys.append(_Key(ed25519_selector.encode(), b"ed25519-sha256", key))
        return cls(settings.dkim_domain, keys)

    def sign(self, message: bytes, now: float | None = None) -> bytes:
        """`message` (CRLF, headers then body, as sent) with its signature header(s) first."""
        headers, body = dkim.rfc822_parse(message)
        return self.sign_parsed(message, headers, body_digest(body), now)

    def sign_parsed(
        self,
        message: bytes,
        headers: list[list[bytes]],
        body_sha256: bytes,
        now: float | None = None,
    ) -> bytes:
        """`sign` for a caller that already has the message's headers (as dkim.rfc822_parse
        gives them) and the SHA-256 of its canonical body: the column mail computes both from
        parts it prepared once per column instead of rescanning 20 KB per reader."""
        return self.signature(headers, body_sha256, now) + message

    def signature(
        self, headers: list[list[bytes]], body_sha256: bytes, now: float | None = None
    ) -> bytes:
        """The DKIM-Signature header field(s) alone, to put before the message's own headers."""
        return self.signature_of_canonical(RELAXED.canonicalize_headers(headers), body_sha256, now)

    def signature_of_canonical(
        self, canonical: list[tuple[bytes, bytes]], body_sha256: bytes, now: float | None = None
    ) -> bytes:
        """`signature` for headers already in relaxed form (`canonical_headers`): a mail whose
        fixed headers were canonicalised once, and only each reader's few fields per message."""
        body_hash = base64.b64encode(body_sha256)
        present = {name for name, _value in canonical}
        signed = [h for h in SIGNED if h in present] + [b"from"]
        selected = b"".join(name + b":" + value for name, value in _select(canonical, signed))
        stamp = str(int(time.time() if now is None else now)).encode()
        return b"".join(
            self._signature(key, selected, signed, body_hash, stamp) for key in self.keys
        )

    def _signature(
        self,
        key: _Key,
        selected: bytes,
        signed: list[bytes],
        body_hash: bytes,
        stamp: bytes,
    ) -> bytes:
        fields = [
            (b"v", b"1"),
            (b"a", key.algorithm),
            (b"c", b"relaxed/relaxed"),
            (b"d", self.domain),
            (b"s", key.selector),
            (b"t", stamp),
            (b"h", b" : ".join(signed)),  # spaces: fold() may only break the list there
            (b"bh", body_hash),
            (b"b", b""),
        ]
        unsigned = dkim.fold(
            b"; ".join(b"=".join(f) for f in fields), namelen=len(b"DKIM-Signature")
        )
        # dkim.hash_headers, with the selection done once for both keys: the signed fields,
        # then this header's own relaxed form with an empty b= and no final CRLF.
        # Relaxed form by hand: fold() only inserts CRLF+space, b= is still empty here.
        value = _BLANKS.sub(b" ", unsigned.replace(b"\r\n", b"")).strip()
        hasher = hashlib.sha256(selected)
        hasher.update(b"dkim-signature:" + value)
        signature = base64.b64encode(key.sign(hasher.digest()))
        value = dkim.fold(unsigned + signature, namelen=len(b"DKIM-Signature"))
        return b"DKIM-Signature: " + value + b"\r\n"


def _select(canonical: list[tuple[bytes, bytes]], signed: list[bytes]) -> list[tuple[bytes, bytes]]:
    """dkim.select_headers for relaxed (lower-case) names: for each name in `signed`, the
    last field of that name not taken yet; a name with none left is skipped."""
    by_name: dict[bytes, list[tuple[bytes, bytes]]] = {}
    for field in canonical:
        by_name.setdefault(field[0], []).append(field)
    return [by_name[name].pop() for name in signed if by_name.get(name)]


def header_fields(head: bytes) -> list[list[bytes]]:
    """A header block (CRLF lines, no blank line) as [name, value] pairs, as dkimpy reads them."""
    headers, _body = dkim.rfc822_parse(head + b"\r\n")
    return headers


def canonical_headers(head: bytes) -> list[tuple[bytes, bytes]]:
    """Header lines (CRLF, no blank line) in relaxed form, in order. Each field is
    canonicalised alone, so the form of a header block is the sum of its parts'."""
    if b"\t" in head or b"  " in head or b"\r\n " in head or not head.endswith(b"\r\n"):
        return RELAXED.canonicalize_headers(header_fields(head))  # type: ignore[no-any-return]
    # Unfolded, single spaces only: relaxed form is the lower-case name and the stripped value.
    fields = []
    for line in head[:-2].split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if not colon:
            return RELAXED.canonicalize_headers(header_fields(head))  # type: ignore[no-any-return]
        fields.append((name.lower().rstrip(), value.strip() + b"\r\n"))
    return fields


def body_digest(body: bytes) -> bytes:
    """SHA-256 of the relaxed canonical form of a whole body (RFC 6376 3.4.4)."""
    return hashlib.sha256(RELAXED.canonicalize_body(body)).digest()


def canonical_lines(lines: bytes) -> bytes:
    """Relaxed canonicalisation of whole lines inside a body, which is all of it but the rule
    about empty lines at the end: a body cut at line ends can be canonicalised piece by piece."""
    if b"\t" not in lines and b"  " not in lines and b" \r\n" not in lines:
        return lines  # already relaxed: no tab, no run of spaces, no space before a line end
    return compress_whitespace(strip_trailing_whitespace(lines))


def public_record(key: DkimKey) -> str:
    """The DNS TXT record (RFC 6376 3.6.1) that publishes this key's public half."""
    public = key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def new_key(kind: str) -> DkimKey:
    """A fresh signing key: RSA-2048 (what every receiver checks) or Ed25519 (RFC 8463)."""
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def write_key(key: DkimKey, path: Path) -> None:
    """Write the private key as PEM, readable by its owner only (0600); never over a file."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)


@dataclass(frozen=True)
class DnsRecord:
    """One TXT record to publish: its name, and its value as a zone file writes it."""

    name: str
    value: str
    why: str

    @property
    def zone_line(self) -> str:
        """`name IN TXT "…" "…"`: TXT strings are at most 255 characters (RFC 1035 3.3)."""
        chunks = [self.value[i : i + 250] for i in range(0, len(self.value), 250)]
        return f"{self.name}. IN TXT " + " ".join(f'"{c}"' for c in chunks)


def dns_records(domain: str, selector: str, key: DkimKey) -> list[DnsRecord]:
    """What to publish for `domain`: the key's DKIM record, and an SPF and a DMARC record to
    start from (the relay's own SPF include, and a stricter DMARC policy once reports are
    clean, are the operator's to add)."""
    return [
        DnsRecord(f"{selector}._domainkey.{domain}", public_record(key), "DKIM: the public key"),
        DnsRecord(domain, "v=spf1 mx a ~all", "SPF: add your relay's include: before ~all"),
        DnsRecord(
            f"_dmarc.{domain}",
            f"v=DMARC1; p=none; rua=mailto:dmarc@{domain}; adkim=s; aspf=r",
            "DMARC: start with p=none, move to quarantine once the reports are clean",
        ),
    ]
