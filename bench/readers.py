"""The bench's readers: addresses, and the CSV file `broadside subscribers import` reads.

The file is written a line at a time, so a million readers cost the bench no memory; every
tenth reader gave no name, so both greeting variants of the column are sent.
"""

from __future__ import annotations

import csv
from pathlib import Path

UNNAMED_EVERY = 10


def reader_address(i: int) -> str:
    """The i-th reader's address (the ceiling uses the same ones)."""
    return f"reader{i:07d}@example.com"


def reader_name(i: int) -> str:
    """The i-th reader's name; empty for every tenth."""
    return "" if i % UNNAMED_EVERY == 0 else f"Reader {i}"


def write_readers_csv(path: Path, readers: int) -> Path:
    """A UTF-8 CSV of `readers` readers with a header row (email, name), streamed to disk."""
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(("email", "name"))
        for i in range(readers):
            writer.writerow((reader_address(i), reader_name(i)))
    return path
