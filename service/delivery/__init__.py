"""Delivery of the daily column: sends, the per-recipient ledger and the workers."""
