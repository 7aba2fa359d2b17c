"""Broadside: double opt-in subscriptions and the daily World View column by e-mail."""

__version__ = "0.1.0"
