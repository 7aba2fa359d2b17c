"""Issue 15's goals (G1–G6) and issue 16's (G7, G8: local-time delivery) judged from one run's
figures, and the results row docs/BENCHMARKS.md keeps.

Pure functions of the run's report (the dict `--json` writes), so that they can be tested
without running anything. A goal measured at another size than it names is shown with the
figure that was measured and "not measured", with the flag that would measure it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MET, NOT_MET, NOT_MEASURED = "met", "not met", "not measured"
HUNDRED_K, MILLION, TEN_K = 100_000, 1_000_000, 10_000
CEILING_SHARE = 1.0  # G1
TWO_WORKERS, THREE_WORKERS = 1.7, 2.5  # G2a, G2b
RSS_LIMIT_MB, RSS_GROWTH = 120.0, 0.10  # G3 (and G5's constant memory)
SNAPSHOT_LIMIT_S = {"postgresql": 20.0, "sqlite": 30.0}  # G4
IMPORT_RATE = 20_000  # G5, rows/s on PostgreSQL
WEB_RATE, WEB_P99_MS = 1_000, 50.0  # G6
LOCAL_TOLERANCE = 0.05  # G7: the local send path's share of the ceiling against fixed mode's
ZONES = 400  # G8: the readers' zones (bench/readers.py), judged against G4's limits
BACKEND_NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


@dataclass(frozen=True)
class Verdict:
    """One goal on one backend: what was measured and whether it meets the goal."""

    goal: str
    backend: str
    figure: str
    status: str


def _status(ok: bool) -> str:
    return MET if ok else NOT_MET


def _at(report: dict[str, Any], backend: str, readers: int) -> dict[str, Any] | None:
    return next(
        (m for m in report["sizes"] if m["backend"] == backend and m["readers"] == readers), None
    )


def _largest(report: dict[str, Any], backend: str) -> dict[str, Any] | None:
    mine = [m for m in report["sizes"] if m["backend"] == backend]
    return max(mine, key=lambda m: m["readers"]) if mine else None


def _n(readers: int) -> str:
    return f"N={readers:,}"


def g1_ceiling(report: dict[str, Any], backend: str) -> Verdict:
    """G1: one `broadside send` at N = 100,000, DKIM-signed, ≥ 1.0 × the sendmail() ceiling."""
    goal = "G1 send path ≥ 1.0 × sendmail() ceiling, N=100k, DKIM"
    m = _at(report, backend, HUNDRED_K) or _largest(report, backend)
    if m is None:
        return Verdict(goal, backend, "–", f"{NOT_MEASURED} (--backend {backend})")
    share = m["send_vs_ceiling"]
    figure = (
        f"{share:.2f} × ({m['send_path']['msgs_per_s']:,.0f} / "
        f"{m['ceiling']['msgs_per_s']:,.0f} msg/s) at {_n(m['readers'])}"
    )
    if not report["dkim"]:
        return Verdict(goal, backend, figure, f"{NOT_MEASURED} (unsigned: drop --no-dkim)")
    if m["readers"] != HUNDRED_K:
        return Verdict(goal, backend, figure, f"{NOT_MEASURED} at 100k (make bench)")
    return Verdict(goal, backend, figure, _status(share >= CEILING_SHARE))


def g2_workers(report: dict[str, Any]) -> list[Verdict]:
    """G2a: two workers ≥ 1.7 × one; G2b: three at K=4, 50 ms DATA, ≥ 2.5 × one, exactly once."""
    goals = [
        ("two_workers", "G2a two workers ≥ 1.7 × one", TWO_WORKERS),
        (
            "three_workers_slow_relay",
            "G2b three workers K=4, 50 ms DATA ≥ 2.5 × one",
            THREE_WORKERS,
        ),
    ]
    scale_out = report.get("scale_out") or {}
    verdicts = []
    for key, goal, wanted in goals:
        s = scale_out.get(key)
        if s is None:
            why = "needs PostgreSQL and --scale-out"
            verdicts.append(Verdict(goal, "postgresql", "–", f"{NOT_MEASURED} ({why})"))
            continue
        figure = (
            f"{s['speedup']:.2f} × ({s['many']['msgs_per_s']:,.0f} / "
            f"{s['one']['msgs_per_s']:,.0f} msg/s) at {_n(s['readers'])}"
        )
        ok = s["speedup"] >= wanted
        if key == "three_workers_slow_relay":
            figure += ", each reader once" if s["many"]["counted_by_sink"] else ", not counted"
            ok = ok and s["many"]["counted_by_sink"]
        verdicts.append(Verdict(goal, "postgresql", figure, _status(ok)))
    return verdicts


def _growth(big: float, small: float) -> float:
    return (big - small) / small


def g3_memory(report: dict[str, Any], backend: str) -> Verdict:
    """G3: the sending process's peak RSS ≤ 120 MB at N = 1M, within 10 % of N = 10k's."""
    goal = "G3 send peak RSS ≤ 120 MB at 1M, within 10 % of 10k"
    big, small = _at(report, backend, MILLION), _at(report, backend, TEN_K)
    if big is None or small is None:
        m = _largest(report, backend)
        figure = f"{m['send_path']['peak_rss_mb']:.1f} MB at {_n(m['readers'])}" if m else "–"
        return Verdict(goal, backend, figure, f"{NOT_MEASURED} (--million)")
    rss_big, rss_small = big["send_path"]["peak_rss_mb"], small["send_path"]["peak_rss_mb"]
    growth = _growth(rss_big, rss_small)
    figure = f"{rss_big:.1f} MB at 1M, {rss_small:.1f} MB at 10k ({growth:+.1%})"
    return Verdict(goal, backend, figure, _status(rss_big <= RSS_LIMIT_MB and growth <= RSS_GROWTH))


def _fixed_snapshot(snapshot: dict[str, Any]) -> float | None:
    fixed = snapshot.get("fixed")
    return fixed["seconds"] if fixed else None


def g4_snapshot(report: dict[str, Any], backend: str) -> Verdict:
    """G4: starting a send for 1M readers ≤ 20 s on PostgreSQL, ≤ 30 s on SQLite; judged on
    the product's default (DELIVERY_TIMING=local), the fixed mode's figure beside it."""
    limit = SNAPSHOT_LIMIT_S[backend]
    goal = f"G4 snapshot of 1M readers ≤ {limit:.0f} s"
    m = _at(report, backend, MILLION) or _largest(report, backend)
    if m is None:
        return Verdict(goal, backend, "–", f"{NOT_MEASURED} at 1M (--million)")
    seconds, fixed = m["snapshot"]["seconds"], _fixed_snapshot(m["snapshot"])
    figure = f"{seconds:.2f} s at {_n(m['readers'])}"
    if fixed is not None:
        figure += f" (fixed mode {fixed:.2f} s)"
    if m["readers"] != MILLION:
        return Verdict(goal, backend, figure, f"{NOT_MEASURED} at 1M (--million)")
    return Verdict(goal, backend, figure, _status(seconds <= limit))


def g5_import(report: dict[str, Any]) -> Verdict:
    """G5: importing 1M rows on PostgreSQL ≥ 20,000 rows/s, in constant memory (peak RSS
    within 10 % of the 10k import's)."""
    goal = "G5 import of 1M rows ≥ 20,000 rows/s, constant memory"
    big, small = _at(report, "postgresql", MILLION), _at(report, "postgresql", TEN_K)
    if big is None:
        m = _largest(report, "postgresql")
        if m is None:
            return Verdict(goal, "postgresql", "–", f"{NOT_MEASURED} (--backend postgresql)")
        i = m["import"]
        figure = f"{i['rows_per_s']:,.0f} rows/s, {i['peak_rss_mb']:.1f} MB at {_n(m['readers'])}"
        return Verdict(goal, "postgresql", figure, f"{NOT_MEASURED} at 1M (--million)")
    rate, rss = big["import"]["rows_per_s"], big["import"]["peak_rss_mb"]
    figure = f"{rate:,.0f} rows/s, peak RSS {rss:.1f} MB at 1M"
    ok = rate >= IMPORT_RATE
    if small is not None:
        growth = _growth(rss, small["import"]["peak_rss_mb"])
        figure += f" ({growth:+.1%} on 10k)"
        ok = ok and growth <= RSS_GROWTH
    return Verdict(goal, "postgresql", figure, _status(ok))


def g6_web(report: dict[str, Any], backend: str) -> Verdict:
    """G6: POST /subscribe ≥ 1,000 req/s, p99 ≤ 50 ms, one uvicorn worker, 16 connections."""
    goal = "G6 POST /subscribe ≥ 1,000 req/s, p99 ≤ 50 ms"
    web = report.get("web") or {}
    result = web.get(backend)
    if result is None:
        return Verdict(goal, backend, "–", f"{NOT_MEASURED} ({report.get('web_note', '--web')})")
    if "error" in result:
        return Verdict(goal, backend, "–", f"{NOT_MEASURED} (failed: {result['error']})")
    figure = (
        f"{result['requests_per_s']:,.0f} req/s, p50 {result['p50_ms']:.1f} ms,"
        f" p99 {result['p99_ms']:.1f} ms, {result['errors']} errors"
    )
    if result.get("work_lost"):
        figure += ", work lost (outbox ≠ accepted)"
    unsent = result.get("outbox_unsent", 0)
    if unsent:
        figure += f", {unsent:,} confirmations unsent {result['outbox_drain_s']:.0f} s later"
    elif "outbox_sent_by_end" in result:
        figure += f", {result['outbox_sent_by_end']:,} confirmations sent during the run"
    ok = (
        result["requests_per_s"] >= WEB_RATE
        and result["p99_ms"] <= WEB_P99_MS
        and not result["errors"]
        and not result.get("work_lost")
        and not unsent
    )
    return Verdict(goal, backend, figure, _status(ok))


def _measured(report: dict[str, Any], backend: str) -> list[dict[str, Any]]:
    """Every measurement of `backend` in the run: its sizes and its comparison, if any."""
    measured = [*report["sizes"], *(report.get("comparisons") or [])]
    return [m for m in measured if m["backend"] == backend]


def _compared(report: dict[str, Any], backend: str) -> dict[str, Any] | None:
    """The largest measurement of `backend` whose readers were also sent in fixed mode."""
    mine = [m for m in _measured(report, backend) if m.get("fixed")]
    return max(mine, key=lambda m: m["readers"]) if mine else None


def _sends(m: dict[str, Any], mode: str) -> list[dict[str, Any]]:
    """Every send of `m`'s readers in `mode` (local or fixed), each with its share."""
    again = m.get("again") or {}
    first = m if mode == "local" else m.get("fixed")
    return [each for each in (first, again.get(mode)) if each]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _rates(sends: list[dict[str, Any]]) -> float:
    return _mean([each["send_path"]["msgs_per_s"] for each in sends])


def local_vs_fixed(m: dict[str, Any]) -> float | None:
    """G7's figure, the local mode's share of the ceiling over the fixed mode's. The ceiling is
    the same command in both modes (one prebuilt message to the same kind of sink: the mode
    plays no part), so both shares have one denominator and their ratio is the mean local rate
    over the mean fixed rate; dividing each send by a ceiling of its own only added the
    ceiling's noise (two ceilings 12 % apart around two sends 0.3 % apart). None without a
    fixed send."""
    local, fixed = _sends(m, "local"), _sends(m, "fixed")
    if not fixed:
        return None
    return round(_rates(local) / _rates(fixed), 3)


def _ceiling(report: dict[str, Any], backend: str) -> float | None:
    """The mean of the sendmail() ceilings measured on `backend` in the run, or None."""
    rates = [m["ceiling"]["msgs_per_s"] for m in _measured(report, backend) if m["ceiling"]]
    return _mean(rates) if rates else None


def _other_load(sends: list[dict[str, Any]]) -> float | None:
    """The mean share of the CPUs that others took during `sends` (other tenants' steal
    included), or None when a send does not say."""
    loads = [each["send_path"].get("other_cpu_pct") for each in sends]
    return None if None in loads else _mean(loads)


def g7_local_send(report: dict[str, Any], backend: str) -> Verdict:
    """G7: the send path's share of the sendmail() ceiling in local mode within 5 % of the
    fixed mode's, on the same readers: the ratio of the modes' mean rates (local_vs_fixed)."""
    goal = "G7 local-time send path within 5 % of fixed"
    m = _compared(report, backend)
    ratio = local_vs_fixed(m) if m is not None else None
    if m is None or ratio is None:
        return Verdict(goal, backend, "–", f"{NOT_MEASURED} (--compare N)")
    local, fixed = _sends(m, "local"), _sends(m, "fixed")
    local_rate, fixed_rate = _rates(local), _rates(fixed)
    figure = (
        f"{ratio:.3f} ({ratio - 1:+.1%}): local {local_rate:,.0f} msg/s,"
        f" fixed {fixed_rate:,.0f} msg/s at {_n(m['readers'])}"
    )
    if len(local) > 1:
        figure += f", means of {len(local)} sends each (local, fixed, fixed, local)"
    if ceiling := _ceiling(report, backend):
        figure += (
            f"; {local_rate / ceiling:.2f} and {fixed_rate / ceiling:.2f} × the run's"
            f" ceiling ({ceiling:,.0f} msg/s)"
        )
    # What the machine's other load did to each mode: an uneven share reads as a difference.
    local_load, fixed_load = _other_load(local), _other_load(fixed)
    if local_load is not None and fixed_load is not None:
        figure += f"; other load {local_load:.0f} % (local) and {fixed_load:.0f} % (fixed)"
    return Verdict(goal, backend, figure, _status(abs(ratio - 1) <= LOCAL_TOLERANCE))


def g8_zones_snapshot(report: dict[str, Any], backend: str) -> Verdict:
    """G8: the snapshot of 1M readers spread over 400 zones (one INSERT … SELECT per zone)
    within G4's limits."""
    limit = SNAPSHOT_LIMIT_S[backend]
    goal = f"G8 snapshot of 1M readers over {ZONES} zones ≤ {limit:.0f} s"
    m = _at(report, backend, MILLION) or _largest(report, backend)
    if m is None:
        return Verdict(goal, backend, "–", f"{NOT_MEASURED} at 1M (--million)")
    snapshot = m["snapshot"]
    seconds, zones, fixed = snapshot["seconds"], snapshot.get("zones", 0), _fixed_snapshot(snapshot)
    figure = f"{seconds:.2f} s over {zones} zones at {_n(m['readers'])}"
    if fixed is not None:
        figure += f" ({seconds / fixed:.2f} × fixed mode's {fixed:.2f} s)"
    if zones < ZONES:
        return Verdict(goal, backend, figure, f"{NOT_MEASURED} (readers in {zones} zones)")
    if m["readers"] != MILLION:
        return Verdict(goal, backend, figure, f"{NOT_MEASURED} at 1M (--million)")
    return Verdict(goal, backend, figure, _status(seconds <= limit))


def verdicts(report: dict[str, Any]) -> list[Verdict]:
    """Every goal, per backend where the goal is per backend."""
    backends = report["backends"]
    out = [g1_ceiling(report, b) for b in backends]
    out += g2_workers(report)
    out += [g3_memory(report, b) for b in backends]
    out += [g4_snapshot(report, b) for b in backends]
    out.append(g5_import(report))
    out += [g6_web(report, b) for b in backends]
    out += [g7_local_send(report, b) for b in backends]
    out += [g8_zones_snapshot(report, b) for b in backends]
    return out


def goals_table(found: list[Verdict]) -> str:
    """The goals as a markdown table."""
    lines = ["| goal | backend | measured | status |", "|---|---|---|---|"]
    for v in found:
        name = BACKEND_NAMES.get(v.backend, v.backend)
        lines.append(f"| {v.goal} | {name} | {v.figure} | {v.status} |")
    return "\n".join(lines)


RESULTS_HEADER = (
    "| date | commit | N | backend | sink | limit msg/s | ceiling msg/s | send path msg/s |"
    " send/limit | send/ceiling | send CPU ms/msg (+DB server) | send peak RSS MB |\n"
    "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"
)


def _rate(figures: dict[str, Any] | None) -> str:
    return f"{figures['msgs_per_s']:,.0f}" if figures else "–"


def share_cell(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "–"


def results_row(m: dict[str, Any], date: str, commit: str) -> str:
    """One measurement as the row docs/BENCHMARKS.md keeps."""
    send = m["send_path"]
    cpu = f"{send['cpu_ms_per_msg']:.2f}"
    if m["backend"] == "postgresql":
        cpu += f" (+{send['db_cpu_ms_per_msg']:.2f})"
    return (
        f"| {date} | {commit} | {m['readers']:,} | {BACKEND_NAMES[m['backend']]} | {m['sink']} |"
        f" {_rate(m['limit'])} | {_rate(m['ceiling'])} | {_rate(send)} |"
        f" {share_cell(m['send_vs_limit'])} | {share_cell(m['send_vs_ceiling'])} | {cpu} |"
        f" {send['peak_rss_mb']:.1f} |"
    )
