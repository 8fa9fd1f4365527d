"""Run a gateway benchmark scenario against a real server process.

    python bench/run.py connections [--users N] [--json]
    python bench/run.py broadcast [--watchers W] [--rate R] [--seconds T] [--json]
    python bench/run.py stall [--users N] [--json]
    python bench/run.py burst [--users U] [--kill-after D[,D...]] [--json]
    python bench/run.py soak [--minutes M] [--users U] [--json]

Every run starts its own server (``bench/server_main.py``: SQLite and the log
in a temporary directory, port chosen by the OS) pinned to one core, and load
generators (``bench/loadgen.py``) pinned to another; it waits for
``GET /readyz``, measures, then stops everything and checks that the server
exited 0 after SIGTERM. ``--repeat K`` makes K independent runs and shows
each, their median and their spread. Load goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.processes import BenchError
from bench.report import Progress, RunResult, render_table, to_json
from bench.scenarios import SCENARIOS
from bench.scenarios.common import Layout


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/run.py", description=__doc__.splitlines()[0] if __doc__ else None
    )
    scenarios = parser.add_subparsers(dest="scenario", required=True, metavar="SCENARIO")
    for name, module in SCENARIOS.items():
        sub = scenarios.add_parser(name, help=module.HELP, description=module.__doc__)
        module.add_arguments(sub)
        sub.add_argument("--repeat", type=int, default=1, help="independent runs (default 1)")
        sub.add_argument("--procs", type=int, default=1, help="generator processes (default 1)")
        sub.add_argument("--json", action="store_true", help="print the results as JSON")
        sub.add_argument(
            "--json-file",
            type=Path,
            default=None,
            help="also write the JSON document to this file (the table is printed)",
        )
        sub.add_argument("--no-progress", action="store_true", help="no status line on stderr")
        sub.add_argument("--keep", action="store_true", help="keep each run's temp directory")
        sub.add_argument(
            "--profile",
            type=lambda text: Path(text).resolve(),
            default=None,
            help="record the server with py-spy (raw collapsed stacks) into this file"
            " during the measured phase",
        )
        sub.add_argument(
            "--native", action="store_true", help="with --profile: sample C frames too (GC)"
        )
        sub.add_argument(
            "--server-rev",
            default=None,
            help="run the server from this git revision (exported with git archive)"
            " instead of the working tree",
        )
        sub.add_argument("--server-core", type=int, default=0)
        sub.add_argument("--generator-core", type=int, default=1)
    return parser


def python_speed_ns() -> float:
    """Nanoseconds per iteration of a fixed pure-Python loop, best of 5.

    Lower is faster. The server's CPU figures scale roughly with it, so it is
    what makes runs on different machines (or a busy and a quiet one) comparable.
    """
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        total = 0
        for i in range(200_000):
            total += i & 7
        best = min(best, time.perf_counter() - started)
    return best / 200_000 * 1e9


ROOT = Path(__file__).resolve().parent.parent


def _git(*argv: str) -> str:
    try:
        done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        raise SystemExit(f"bench: git {' '.join(argv)} failed: {error}") from None
    return done.stdout.decode().strip()


def server_revision(rev: str | None) -> str:
    """The commit the server runs: ``rev``'s, or the checkout's HEAD plus
    ``+dirty-<hash of the diff>`` when ``presence_actors`` has uncommitted
    changes (the same hash means the same code)."""
    if rev is not None:
        return _git("rev-parse", "--short", rev)
    commit = _git("rev-parse", "--short", "HEAD")
    diff = _git("diff", "HEAD", "--", "presence_actors")
    untracked = _git("ls-files", "--others", "--exclude-standard", "--", "presence_actors")
    if not diff and not untracked:
        return commit
    digest = hashlib.sha1((diff + untracked).encode()).hexdigest()[:8]
    return f"{commit}+dirty-{digest}"


def export_revision(rev: str, into: Path) -> Path:
    """``presence_actors`` as of ``rev`` in ``into`` (read-only use of the repository)."""
    archive = subprocess.run(
        ["git", "archive", rev, "presence_actors"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def machine_facts(layout: Layout, layout_rev: str | None) -> dict[str, Any]:
    """What the figures depend on: cores, CPU model, Python speed, load at the start."""
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "python_ns_per_loop": round(python_speed_ns(), 1),
        "server_revision": server_revision(layout_rev),
        "load_average_at_start": list(os.getloadavg()),
        "server_core": layout.server_core,
        "generator_core": layout.generator_core,
    }


async def _one_run(
    module: Any, args: argparse.Namespace, workdir: Path, progress: Progress, layout: Layout
) -> RunResult:
    async with trio.open_nursery() as nursery:
        await nursery.start(progress.run)
        result: RunResult = await module.run(args, workdir, progress, layout)
        nursery.cancel_scope.cancel()
    progress.end()
    return result


def _leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.server_rev is None:
        return _main(args, Layout(args.server_core, args.generator_core))
    source = Path(tempfile.mkdtemp(prefix="presence-src-"))
    try:
        export_revision(args.server_rev, source)
        return _main(args, Layout(args.server_core, args.generator_core, source))
    finally:
        shutil.rmtree(source, ignore_errors=True)


def _main(args: argparse.Namespace, layout: Layout) -> int:
    module = SCENARIOS[args.scenario]
    if shutil.which("taskset") is None:
        print("bench: taskset (util-linux) is needed to pin processes to cores", file=sys.stderr)
        return 2
    available = os.sched_getaffinity(0)
    if not {layout.server_core, layout.generator_core} <= available:
        print(f"bench: cores {sorted(available)} available; pick others", file=sys.stderr)
        return 2
    # The orchestrator mostly sleeps; keep it off the server's core.
    os.sched_setaffinity(0, {layout.generator_core})
    machine = machine_facts(layout, args.server_rev)  # after pinning: the generator core's
    progress = Progress(enabled=not args.no_progress)
    runs: list[RunResult] = []
    for number in range(1, args.repeat + 1):
        workdir = Path(tempfile.mkdtemp(prefix=f"presence-bench-{args.scenario}-"))
        progress.note(f"{args.scenario}: run {number}/{args.repeat} in {workdir}")
        started = time.monotonic()
        load = os.getloadavg()[0]
        revision = server_revision(args.server_rev)
        failures: list[BaseException] = []
        # Scenarios that vary a parameter across repeats (``burst --kill-after``) read it.
        args.run_number = number
        try:
            result = trio.run(_one_run, module, args, workdir, progress, layout)
        except* BenchError as group:
            failures.extend(_leaves(group))
        if failures:
            progress.end()
            for error in failures:
                print(f"bench: run {number} failed: {error}", file=sys.stderr)
            print(f"bench: files kept in {workdir}", file=sys.stderr)
            return 1
        result.details["run_seconds"] = time.monotonic() - started
        # On a shared machine the load beside each run's figures says how much to trust them.
        result.add("load_average", "load average (1 min) at the run's start", load, "", digits=2)
        result.details["server_revision"] = revision
        runs.append(result)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    parameters = module.parameters(args)
    document = {
        "scenario": args.scenario,
        "parameters": parameters,
        "machine": machine,
        **to_json(runs),
    }
    if args.json_file is not None:
        args.json_file.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2))
    if args.json:
        print(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(f"scenario: {args.scenario}  " + "  ".join(f"{k}={v}" for k, v in parameters.items()))
    print(
        f"machine: nproc={machine['nproc']} ({machine['cpu_model']}), server on core "
        f"{layout.server_core}, generators on core {layout.generator_core}, "
        f"python loop {machine['python_ns_per_loop']} ns, "
        f"revision {machine['server_revision']}, "
        f"load average at start {machine['load_average_at_start'][0]:.2f}"
    )
    print()
    print(render_table(runs))
    for number, run in enumerate(runs, 1):
        for line in run.details.get("verdict_lines", ()):
            print(f"run {number}: {line}" if len(runs) > 1 else line)
    saturated = [i + 1 for i, r in enumerate(runs) if r.details.get("generator_saturated")]
    if saturated:
        print(
            f"\nwarning: the generator used >= 90% of its core in run(s) {saturated}; "
            "it may not have kept up. Try a lower load."
        )
    disturbed = [i + 1 for i, r in enumerate(runs) if r.details.get("disturbed")]
    if disturbed:
        print(
            f"warning: other processes took >= 20% of a run's core in run(s) {disturbed}; "
            "their figures are suspect."
        )
    revisions = sorted({str(r.details["server_revision"]) for r in runs})
    if len(revisions) > 1:
        print(f"warning: the server's code changed between runs: {', '.join(revisions)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
