"""A real IMAP server for tests: Dovecot (Debian's dovecot-imapd) with its own configuration,
IMAPS only, a self-signed certificate, one mailbox user and a Maildir the test fills."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.certificates import self_signed
from tests.helpers import eventually, free_port

DOVECOT = shutil.which("dovecot") or (
    "/usr/sbin/dovecot" if Path("/usr/sbin/dovecot").exists() else None
)
MAIL_USER = "nobody"  # Dovecot will not keep mail as root


def usable() -> str | None:
    """Why Dovecot cannot run here, or None when it can."""
    if DOVECOT is None:
        return "needs Debian's dovecot-imapd (.ci/run installs it when it is missing)"
    if os.geteuid() != 0:
        return "Dovecot's master process needs root to switch to the mail user"
    return None


def self_signed_files(folder: Path) -> Path:
    """A key and certificate for 127.0.0.1 and localhost in `folder`; the certificate's PEM
    file doubles as the CA a client is told to trust."""
    key = ec.generate_private_key(ec.SECP256R1())
    (folder / "cert.pem").write_bytes(
        self_signed(key, "localhost", hosts=["localhost", "127.0.0.1"], days=1)
    )
    (folder / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return folder / "cert.pem"


class DovecotServer:
    """Dovecot on 127.0.0.1:<free port> (IMAPS), user `bounces` with `password`."""

    user = "bounces"
    password = "imap-test-password"

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.maildir = folder / "home" / self.user / "Maildir"
        self.certificate = folder / "cert.pem"

    @property
    def url(self) -> str:
        return f"imaps://{self.user}:{self.password}@127.0.0.1:{self.port}/INBOX"

    def start(self) -> None:
        for sub in ("new", "cur", "tmp"):
            (self.maildir / sub).mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o755)
        self.certificate = self_signed_files(self.folder)
        (self.folder / "passwd").write_text(f"{self.user}:{{PLAIN}}{self.password}\n")
        self._chown(self.folder / "home")
        (self.folder / "dovecot.conf").write_text(self._config())
        subprocess.run([DOVECOT or "dovecot", "-c", str(self.folder / "dovecot.conf")], check=True)
        if not eventually(self._listening, timeout=10):
            raise RuntimeError(f"Dovecot did not start: {self.log()}")

    def stop(self) -> None:
        subprocess.run(
            [DOVECOT or "dovecot", "-c", str(self.folder / "dovecot.conf"), "stop"], check=False
        )
        eventually(lambda: not self._listening(), timeout=10)

    def deliver(self, raw: bytes) -> None:
        """Put a mail in the inbox, as a delivery agent does (Maildir: tmp, then new)."""
        name = f"{time.time_ns()}.{uuid.uuid4().hex}.test"
        tmp = self.maildir / "tmp" / name
        tmp.write_bytes(raw)
        self._chown(tmp)
        tmp.rename(self.maildir / "new" / name)

    def messages(self) -> int:
        """Mails left in the inbox (new and seen)."""
        return sum(1 for sub in ("new", "cur") for _ in (self.maildir / sub).iterdir())

    def log(self) -> str:
        path = self.folder / "dovecot.log"
        return path.read_text() if path.exists() else ""

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _chown(self, path: Path) -> None:
        user = pwd.getpwnam(MAIL_USER)
        for item in [path, *path.rglob("*")] if path.is_dir() else [path]:
            os.chown(item, user.pw_uid, user.pw_gid)

    def _config(self) -> str:
        f = self.folder
        return f"""\
base_dir = {f}/run
state_dir = {f}/run/state
log_path = {f}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{f}/cert.pem
ssl_key = <{f}/key.pem
auth_mechanisms = plain
disable_plaintext_auth = yes
first_valid_uid = 1
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = {self.port}
    ssl = yes
  }}
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {f}/passwd
}}
userdb {{
  driver = static
  args = uid={MAIL_USER} gid={pwd.getpwnam(MAIL_USER).pw_gid} home={f}/home/%u
}}
mail_location = maildir:~/Maildir
"""
