"""The bench's readers: addresses, the CSV file `broadside subscribers import` reads, and the
time zones they live in.

The file is written a line at a time, so a million readers cost the bench no memory; every
tenth reader gave no name, so both greeting variants of the column are sent. After the
import the readers are spread over ZONES real IANA zones by their id (issue 16's "a million
readers over 400 zones"), every (ZONES + 1)-th reader keeping none, the service's TIMEZONE.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

UNNAMED_EVERY = 10
ZONES = 400


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


def spread_zones(names: Sequence[str], count: int = ZONES) -> tuple[str, ...]:
    """`count` of the zones `names` lists (service.clock.zone_names(), sorted), taken evenly
    from first to last, so that every region and offset is among them; the same every run."""
    if not 0 < count <= len(names):
        raise ValueError(f"cannot take {count} zones from {len(names)}")
    return tuple(names[i * len(names) // count] for i in range(count))


def zone_slot(subscriber_id: int, zones: int = ZONES) -> int:
    """The reader's place among the zones: 0 for none (the service's TIMEZONE), else the
    1-based index of their zone; the UPDATE that spreads them computes the same."""
    return subscriber_id % (zones + 1)


def reader_zone(subscriber_id: int, zones: Sequence[str]) -> str | None:
    """The zone of the reader with this id once spread over `zones`, None for the service's."""
    slot = zone_slot(subscriber_id, len(zones))
    return zones[slot - 1] if slot else None
