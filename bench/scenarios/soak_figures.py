"""The soak's table: traffic, the three curves and their verdicts, the nothing-lost checks."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.report import RunResult
from bench.scenarios.common import Layout, Window
from bench.scenarios.soak_checks import (
    Curve,
    curves,
    online_range,
    read_users,
    rest_mismatches,
    store_mismatches,
)

if TYPE_CHECKING:
    from bench.scenarios.soak import Soak

# Close codes shown as their own rows; the rest are summed in "other".
SHOWN_CLOSES = ("1000", "1009", "1013", "4002", "rst")


def figures(soak: Soak, workdir: Path, window: Window, layout: Layout) -> RunResult:
    assert soak.worker is not None
    report: dict[str, Any] = soak.worker.result or {}
    model: dict[str, dict[str, Any]] = report.get("model") or {}
    result = RunResult()
    _traffic(result, soak, report)
    drawn = curves(soak.samples, soak.warmup)
    for curve in drawn:
        _curve(result, curve)
    _nothing_lost(result, soak, report, model, workdir)
    result.add(
        "server_exit_status",
        "server exit status after SIGTERM",
        soak.exit_status,
        "",
        digits=0,
        aim=("<=", 0),
    )
    result.add("server_stop_s", "  stop took", soak.stop_seconds, "s", digits=2)
    window.add_to(result, layout)
    result.details.update(
        {
            "verdict_lines": [curve.line() for curve in drawn],
            "samples": [
                {
                    "at": s.at,
                    "phase": s.phase,
                    "rss_kb": s.rss_kb,
                    "fds": s.fds,
                    "tasks": s.tasks,
                    "connections": s.connections,
                    "sessions": s.sessions,
                    "online": s.online,
                    "pushes": s.pushes,
                    "open_clients": s.open_clients,
                    "cpu_seconds": s.cpu_seconds,
                }
                for s in soak.samples
            ],
            "rest": dict(soak.rest),
            "rest_unexpected": dict(soak.rest_unexpected),
            "generator": {key: value for key, value in report.items() if key != "model"},
            "stats_at_verify": soak.verify_stats,
            "stats_after_leave": soak.left_stats,
        }
    )
    return result


def _traffic(result: RunResult, soak: Soak, report: dict[str, Any]) -> None:
    load = [s for s in soak.samples if s.phase == "load"]
    welcomes: dict[str, int] = report.get("welcomes") or {}
    actions: dict[str, int] = report.get("actions") or {}
    acked: dict[str, int] = report.get("acked") or {}
    closes: Counter[str] = Counter()
    for by_reason in (report.get("role_closes") or {}).values():
        for key, count in by_reason.items():
            closes[key.split(":", 1)[1]] += count
    pushes = [s.pushes for s in load if s.pushes is not None]
    result.add("minutes", "load", soak.args.minutes, "min", digits=1)
    result.add(
        "open_mean",
        "connections open (mean of samples)",
        sum(s.open_clients for s in load) / len(load) if load else None,
        "",
        digits=0,
    )
    result.add("welcomes", "connections welcomed", sum(welcomes.values()), "", digits=0)
    for kind in ("user", "slow", "junk"):
        result.add(f"welcomes_{kind}", f"  {kind}", welcomes.get(kind, 0), "", digits=0)
    result.add(
        "disconnects", "disconnects made by users", actions.get("disconnect", 0), "", digits=0
    )
    for code in SHOWN_CLOSES:
        result.add(f"closes_{code}", f"closes {code}", closes.get(code, 0), "", digits=0)
    other = sum(v for k, v in closes.items() if k not in SHOWN_CLOSES)
    result.add("closes_other", "closes other (in the JSON)", other, "", digits=0)
    result.add("changes_acked", "status changes acknowledged", acked.get("status", 0), "", digits=0)
    result.add("identifies_acked", "usernames acknowledged", acked.get("identify", 0), "", digits=0)
    result.add("queries", "WebSocket queries", actions.get("query", 0), "", digits=0)
    result.add(
        "subscriptions",
        "subscribe / unsubscribe requests",
        actions.get("subscribe", 0) + actions.get("unsubscribe", 0),
        "",
        digits=0,
    )
    result.add(
        "pushes_server",
        "pushes sent by the server",
        pushes[-1] - pushes[0] if len(pushes) > 1 else None,
        "",
        digits=0,
    )
    result.add(
        "pushes_received", "pushes received by clients", report.get("pushes", 0), "", digits=0
    )
    result.add("rest_reads", "REST reads", sum(soak.rest.values()), "", digits=0)
    result.add(
        "junk_sent",
        "junk messages sent",
        sum((report.get("junk_sent") or {}).values()),
        "",
        digits=0,
    )
    result.add(
        "junk_errors",
        "  error replies to them",
        sum((report.get("role_errors") or {}).get("junk", {}).values()),
        "",
        digits=0,
    )


def _curve(result: RunResult, curve: Curve) -> None:
    key = curve.name.split()[-1].lower()
    unit, digits = curve.unit, 1 if curve.unit == "MB" else 0
    label = curve.name
    result.add(f"{key}_idle", f"{label} idle (before the clients)", curve.idle, unit, digits=digits)
    result.add(f"{key}_start", f"{label} start (after warm-up)", curve.start, unit, digits=digits)
    result.add(f"{key}_end", f"{label} end", curve.end, unit, digits=digits)
    result.add(f"{key}_max", f"{label} max", curve.maximum, unit, digits=digits)
    result.add(f"{key}_slope", f"{label} slope per 10 min", curve.slope, unit, digits=1)
    grown = None if curve.start is None or curve.end is None else curve.end - curve.start
    result.add(
        f"{key}_growth",
        f"{label} end - start (flat)",
        grown,
        unit,
        digits=1,
        aim=("<=", round(curve.allowed, 1)),
    )
    result.add(
        f"{key}_left", f"{label} after everyone left", curve.after_leave, unit, digits=digits
    )


def _nothing_lost(
    result: RunResult,
    soak: Soak,
    report: dict[str, Any],
    model: dict[str, dict[str, Any]],
    workdir: Path,
) -> None:
    connected = set(report.get("verified_users") or ())
    at_verify = rest_mismatches(soak.verify_views, model, connected)
    after_leave = rest_mismatches(soak.left_views, model, set())
    rows = read_users(workdir / "presence.db")
    in_store = store_mismatches(rows, model)
    low, high = online_range(model, connected)
    online = soak.verify_stats.get("onlineUsers")
    online_wrong = 0 if online is not None and low <= online <= high else 1
    errors = report.get("role_errors") or {}
    well_behaved = sum(errors.get("user", {}).values()) + sum(errors.get("slow", {}).values())
    unasked = sum(
        count
        for key, count in (report.get("role_closes") or {}).get("user", {}).items()
        if key.startswith("server:")
    )
    slow_closes = (report.get("role_closes") or {}).get("slow", {})
    left = soak.left_sample
    zero = ("<=", 0)
    checked = sum(1 for m in model.values() if None not in m["messages"])
    result.add("users_checked", "users with an acknowledged statusMessage", checked, "", digits=0)
    result.add("verified", "connected users checking their own view", len(connected), "", digits=0)
    result.add(
        "own_view_wrong",
        "  own view not as acknowledged",
        report.get("verify_mismatch_count"),
        "",
        digits=0,
        aim=zero,
    )
    result.add(
        "acks_wrong",
        "acknowledgements not as requested",
        report.get("ack_mismatch_count"),
        "",
        digits=0,
        aim=zero,
    )
    result.add(
        "rest_wrong",
        "REST view not as acknowledged (at the end of the load)",
        len(at_verify),
        "",
        digits=0,
        aim=zero,
    )
    result.add(
        "online_count_wrong",
        f"  /api/stats onlineUsers outside {low}-{high}",
        online_wrong,
        "",
        digits=0,
        aim=zero,
    )
    result.add(
        "ghosts",
        "online users once everyone left (/api/stats)",
        soak.left_stats.get("onlineUsers"),
        "",
        digits=0,
        aim=zero,
    )
    result.add(
        "ghost_sessions",
        "  sessions (/metrics)",
        left.sessions if left else None,
        "",
        digits=0,
        aim=zero,
    )
    result.add(
        "ghost_connections",
        "  connections (/metrics)",
        left.connections if left else None,
        "",
        digits=0,
        aim=zero,
    )
    result.add(
        "rest_wrong_left",
        "REST view not offline as acknowledged (everyone left)",
        len(after_leave),
        "",
        digits=0,
        aim=zero,
    )
    result.add(
        "store_wrong",
        "SQLite rows not as acknowledged (after SIGTERM)",
        len(in_store),
        "",
        digits=0,
        aim=zero,
    )
    result.add(
        "errors_well_behaved",
        "error replies to users and slow readers",
        well_behaved,
        "",
        digits=0,
        aim=zero,
    )
    result.add(
        "rest_unexpected",
        "REST answers not 200 (404 for unknown users aside)",
        sum(soak.rest_unexpected.values()),
        "",
        digits=0,
        aim=zero,
    )
    result.add(
        "closed_unasked",
        "users' connections closed by the server unasked",
        unasked,
        "",
        digits=0,
        aim=zero,
    )
    result.add(
        "slow_1013",
        "slow readers that saw the 1013 close frame",
        slow_closes.get("server:1013", 0),
        "",
        digits=0,
    )
    result.add(
        "slow_not_closed",
        "slow readers not closed (read answers past the bound)",
        report.get("slow_not_closed"),
        "",
        digits=0,
        aim=zero,
    )
    result.add(
        "slow_within_bound",
        "  not closed: their answers fit the bound (as they should)",
        report.get("slow_within_bound"),
        "",
        digits=0,
    )
    result.details.update(
        {
            "online_range_at_verify": [low, high],
            "rest_mismatches_at_verify": at_verify[:20],
            "rest_mismatches_after_leave": after_leave[:20],
            "store_mismatches": in_store[:20],
            "users_in_store": len(rows),
        }
    )
