"""Delivery of the daily column: sends, the per-recipient ledger and the workers.

Convention: every function in sends.py and ledger.py takes a Session and only executes or
flushes; the caller decides what one transaction holds (one claim, one group of outcomes,
a send started with its snapshot) and db.transaction commits it, in one place. The async
worker runs them off the event loop with db.in_thread.
"""
