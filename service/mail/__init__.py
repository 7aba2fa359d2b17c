"""Outgoing mail: rendering, message building, the outbox and the SMTP connection."""
