"""bench/web.py reads wrk's report as wrk writes it (the figures make bench-web prints)."""

from __future__ import annotations

from bench.goals import g6_web
from bench.web import parse_wrk, report

WRK_OUTPUT = """\
Running 30s test @ http://127.0.0.1:8000/subscribe
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    12.51ms    4.10ms  80.02ms   90.00%
    Req/Sec   640.12     50.01   700.00     70.00%
  Latency Distribution
     50%  850.00us
     75%   14.00ms
     90%   18.00ms
     99%    1.20s
  38400 requests in 30.01s, 20.00MB read
  Socket errors: connect 0, read 1, write 0, timeout 3
  Non-2xx or 3xx responses: 5
Requests/sec:   1279.57
Transfer/sec:    682.42KB
"""


def test_wrk_figures_are_read_with_their_units() -> None:
    figures = parse_wrk(WRK_OUTPUT)
    assert figures["requests_per_s"] == 1279.57
    assert figures["p50_ms"] == 0.85 and figures["p99_ms"] == 1200.0
    assert (figures["requests"], figures["non_2xx"], figures["socket_errors"]) == (38400, 5, 4)
    assert figures["timeouts"] == 3 and figures["errors"] == 9


def test_a_run_without_errors_reports_none() -> None:
    clean = "\n".join(
        line for line in WRK_OUTPUT.splitlines() if not line.lstrip().startswith(("Socket", "Non"))
    )
    assert parse_wrk(clean)["errors"] == 0


def test_a_fast_run_that_left_its_confirmations_queued_does_not_meet_the_goal() -> None:
    fast = {
        **parse_wrk(WRK_OUTPUT.replace("Non-2xx or 3xx responses: 5\n", "")),
        "p99_ms": 20.0,
        "errors": 0,
        "outbox": 38_400,
        "accepted": 38_400,
        "work_lost": False,
        "outbox_sent_by_end": 900,
        "outbox_drain_s": 30.0,
    }
    assert report("sqlite", {**fast, "outbox_unsent": 0}).endswith(": met")
    queued = report("sqlite", {**fast, "outbox_unsent": 37_500})
    assert "37,500 still unsent 30 s later" in queued and queued.endswith(": not met")
    verdict = g6_web({"web": {"sqlite": {**fast, "outbox_unsent": 37_500}}}, "sqlite")
    assert verdict.status == "not met" and "37,500 confirmations unsent" in verdict.figure
