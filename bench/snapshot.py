"""`make bench-snapshot`: the snapshot alone at a size of your choosing (N = 1,000,000 by
default), for goals G4 and G8 without the hour a whole `--million` run takes: import N readers,
spread them over 400 time zones, and time `daily.start_send` in fixed mode, then in local mode
(one INSERT … SELECT per zone), on SQLite and PostgreSQL.

    python -m bench.snapshot [--readers N] [--backend both] [--database-url URL]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from . import product
from .measure import POSTGRESQL, SQLITE, measure_import, measure_snapshots, spread_readers
from .readers import write_readers_csv

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
LIMITS = {SQLITE: 30.0, POSTGRESQL: 20.0}  # issue 15's G4 seconds at N = 1,000,000


def measure(backend: str, readers: int, csv: Path, server: str, workdir: Path) -> dict[str, Any]:
    """Import, spread and both snapshots of `readers` on a fresh database of `backend`."""
    postgres = backend == POSTGRESQL
    with (
        tempfile.TemporaryDirectory(prefix=f"snapshot-{backend}-", dir=workdir) as tmp,
        product.fresh_database(server if postgres else None, Path(tmp)) as url,
    ):
        p = product.Product(url, Path(tmp), connections=8, dkim_key=None)
        product.migrate(url)
        imported = measure_import(p, csv, readers, postgres)
        zones = spread_readers(p)
        snapshot = measure_snapshots(p, readers, postgres)
    return {"backend": backend, "readers": readers, "import": imported, **zones, **snapshot}


def verdict(m: dict[str, Any]) -> str:
    """One line per database: the local snapshot against G4's limit, the fixed one beside it."""
    limit = LIMITS[m["backend"]]
    met = "met" if m["seconds"] <= limit else "not met"
    at = (
        ""
        if m["readers"] == 1_000_000
        else f" (the goal is at N=1,000,000; this is N={m['readers']:,})"
    )
    return (
        f"{m['backend']}: {m['readers']:,} readers over {m['zones']} zones "
        f"({m['service_zone_readers']:,} in the service's): local {m['seconds']:.2f} s, "
        f"fixed {m['fixed']['seconds']:.2f} s; limit {limit:.0f} s: {met}{at}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readers", type=int, default=1_000_000)
    parser.add_argument("--backend", choices=[SQLITE, POSTGRESQL, "both"], default="both")
    parser.add_argument("--database-url", default=DEFAULT_SERVER)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    backends = [SQLITE, POSTGRESQL] if args.backend == "both" else [args.backend]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-snapshot-") as tmp:
        workdir = Path(tmp)
        csv = write_readers_csv(workdir / "readers.csv", args.readers)
        for backend in backends:
            m = measure(backend, args.readers, csv, args.database_url, workdir)
            print(verdict(m), flush=True)
            results.append(m)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
