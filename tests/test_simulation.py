"""The deterministic simulation: reproducible, seeded interleavings, invariants that catch
planted bugs, shrinking, and the ``simulate`` command.

Each simulation runs the real engine in its own ``trio.run`` on a MockClock, so
these tests are plain functions; a livelock is stopped by the simulation's
watchdog, and subprocesses have timeouts.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

from presence_actors.__main__ import main
from presence_actors.actors import user_state
from presence_actors.actors.policy import Policy
from presence_actors.config import Settings
from presence_actors.model import Status, Visibility
from presence_actors.persistence import Store
from presence_actors.protocol import Logout
from presence_actors.testing import AVAILABLE_FAULTS, Schedule, Simulation, parse_faults
from presence_actors.testing import events as ev
from presence_actors.testing.command import Invocation, parse_numbers, simulate

ROOT = Path(__file__).resolve().parents[1]


def schedule_of(users: int, *events: ev.Event, seed: int = 0) -> Schedule:
    return Schedule(seed, users, frozenset(), tuple(events), tuple(range(len(events))))


def invariants_broken(schedule: Schedule, **kwargs: object) -> set[str]:
    result = Simulation(schedule.seed, schedule.users, **kwargs).run(schedule)  # type: ignore[arg-type]
    return {v.invariant for v in result.violations}


def run_cli(*args: str, hash_seed: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTHONHASHSEED", None)
    if hash_seed is not None:
        env["PYTHONHASHSEED"] = hash_seed
    return subprocess.run(
        [sys.executable, "-m", "presence_actors", "simulate", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


# --- determinism -------------------------------------------------------------------


def test_the_same_seed_prints_the_same_output_byte_for_byte() -> None:
    args = ("--seed", "7", "--steps", "400", "--users", "5", "--faults", "all")
    first = run_cli(*args, hash_seed="1")
    second = run_cli(*args)  # str hashing salted differently: the command fixes it
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert first.stdout == second.stdout
    assert first.stdout.startswith("seed 7: 400 scheduled events for 5 users, faults ")
    assert "no violation" in first.stdout
    # Wall time is not deterministic: it goes to stderr.
    assert "simulated events/s" in first.stderr
    assert "simulated events/s" not in first.stdout


def test_the_seed_decides_the_order_of_ready_tasks() -> None:
    """Eight users connect at one moment: which actor runs first is the scheduler's
    choice, drawn from the seed. The same seed repeats it; other seeds vary it."""
    order: list[str] = []

    def record(moment: object) -> list[str]:
        return []

    connects = [ev.Connect(1.0, u, 0) for u in range(8)]

    def order_for(seed: int) -> tuple[str, ...]:
        order.clear()
        real = user_state.attach

        def attach(state, handle, now, rules):  # type: ignore[no-untyped-def]
            order.append(handle.user_id)
            return real(state, handle, now, rules)

        user_state.attach = attach  # type: ignore[assignment]
        try:
            Simulation(seed, 8).run(schedule_of(8, *connects, seed=seed))
        finally:
            user_state.attach = real  # type: ignore[assignment]
        return tuple(order)

    orders = [order_for(seed) for seed in range(6)]
    assert order_for(3) == orders[3]
    assert len(set(orders)) > 1, orders
    assert all(sorted(o) == sorted(orders[0]) for o in orders)


# --- every fault, and the invariants they must keep -----------------------------------


@pytest.mark.parametrize("fanout", ["everyone", "contacts"])
def test_a_schedule_with_every_fault_keeps_every_invariant(fanout: str) -> None:
    base = Settings()
    settings = attrs.evolve(base, presence=attrs.evolve(base.presence, fanout=fanout))
    result = Simulation(11, 6, settings, faults=AVAILABLE_FAULTS).run(1500)
    assert result.ok, [v.describe() for v in result.violations]
    counters = result.counters
    assert counters.crashes > 0
    assert counters.commit_failures > 0
    assert counters.restarts > 0
    assert counters.pushes > 0
    assert counters.heartbeats > 0


# --- planted bugs: each is caught by the invariant it breaks -------------------------


def test_a_lost_connection_treated_as_a_logout_breaks_the_online_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def detach_as_logout(state, handle, now, rules):  # type: ignore[no-untyped-def]
        return user_state.request(state, handle, Logout(), now, rules)

    monkeypatch.setattr(user_state, "detach", detach_as_logout)
    schedule = schedule_of(2, ev.Connect(1.0, 0, 0), ev.Connect(2.0, 1, 0), ev.Drop(3.0, 0, 0))
    assert "online-count" in invariants_broken(schedule)


def test_a_block_that_hides_nothing_breaks_visibility(monkeypatch: pytest.MonkeyPatch) -> None:
    real = Policy.may_see

    def ignores_blocks(self: Policy, watcher: str | None, user_id: str) -> bool:
        saved, self._blocks = self._blocks, {}
        try:
            return real(self, watcher, user_id)
        finally:
            self._blocks = saved

    monkeypatch.setattr(Policy, "may_see", ignores_blocks)
    schedule = schedule_of(
        2,
        ev.Connect(1.0, 0, 0),
        ev.Connect(2.0, 1, 0),
        ev.Block(3.0, 0, 0, 1),
        ev.SetStatus(4.0, 0, 0, Status.BUSY, None),
    )
    assert "visibility" in invariants_broken(schedule)


def test_a_grace_period_that_never_ends_leaves_a_ghost(monkeypatch: pytest.MonkeyPatch) -> None:
    real = user_state.expire

    def expire(state, now, rules):  # type: ignore[no-untyped-def]
        if state.grace is not None and state.grace.deadline <= now:
            state = state.copy()
            state.grace = attrs.evolve(state.grace, deadline=math.inf)
        return real(state, now, rules)

    monkeypatch.setattr(user_state, "expire", expire)
    schedule = schedule_of(2, ev.Connect(1.0, 0, 0), ev.Drop(2.0, 0, 0))
    assert {"no-ghost", "online-count"} <= invariants_broken(schedule)


def test_a_store_that_forgets_profiles_breaks_durability(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Store, "_write_users", lambda self, writes: 0)
    schedule = schedule_of(
        1,
        ev.Connect(1.0, 0, 0),
        ev.Identify(2.0, 0, 0, "ann"),
        ev.SetStatus(3.0, 0, 0, Status.BUSY, "lunch"),
        ev.Restart(10.0, kill=True),
    )
    assert "durability" in invariants_broken(schedule)


def test_a_store_that_drops_the_audit_log_breaks_audit(monkeypatch: pytest.MonkeyPatch) -> None:
    real = Store.commit

    def commit(self: Store, batch):  # type: ignore[no-untyped-def]
        batch.events.clear()
        return real(self, batch)

    monkeypatch.setattr(Store, "commit", commit)
    schedule = schedule_of(
        2,
        ev.Connect(1.0, 0, 0),
        ev.Connect(2.0, 1, 0),
        ev.SetStatus(3.0, 0, 0, Status.BUSY, None),
    )
    assert "audit" in invariants_broken(schedule)


def test_a_livelock_is_reported_instead_of_hanging(monkeypatch: pytest.MonkeyPatch) -> None:
    """An alarm that is always due now rings its actor for ever at one moment: the
    clock never moves again. The watchdog stops the run and says so."""
    real = user_state.next_deadline

    def always_now(state, now, rules):  # type: ignore[no-untyped-def]
        return now if state.sessions else real(state, now, rules)

    monkeypatch.setattr(user_state, "next_deadline", always_now)
    schedule = schedule_of(1, ev.Connect(1.0, 0, 0), ev.Active(2.0, 0, 0))
    result = Simulation(0, 1, watchdog_rounds=2000).run(schedule)
    [violation] = result.violations
    assert violation.invariant == "engine"
    assert "livelock: the clock stopped at 1.000000" in violation.detail


def test_a_researchers_invariant_is_checked_at_every_moment() -> None:
    seen: list[float] = []

    def nobody_is_busy(moment):  # type: ignore[no-untyped-def]
        seen.append(moment.now)
        return [
            f"{u} is busy"
            for u in moment.truth.users
            if moment.truth.status(u, moment.now) is Status.BUSY
        ]

    schedule = schedule_of(2, ev.Connect(1.0, 0, 0), ev.SetStatus(2.0, 0, 0, Status.BUSY, None))
    result = Simulation(0, 2, invariants={"never-busy": nobody_is_busy}).run(schedule)
    assert seen[:2] == [1.0, 2.0]
    assert next((v.invariant, v.detail, v.at) for v in result.violations) == (
        "never-busy",
        "u0 is busy",
        2.0,
    )


# --- shrinking and replaying ------------------------------------------------------------


def test_a_violation_is_shrunk_and_the_printed_command_replays_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def detach_as_logout(state, handle, now, rules):  # type: ignore[no-untyped-def]
        return user_state.request(state, handle, Logout(), now, rules)

    monkeypatch.setattr(user_state, "detach", detach_as_logout)
    invocation = Invocation(seed=5, steps=300, users=4, faults=frozenset({"crash"}))
    lines, result = simulate(invocation, Settings())
    assert not result.ok
    text = "\n".join(lines)
    assert "  replay       python -m presence_actors simulate --seed 5 --steps 300" in text
    shrunk = lines.index("replay exactly:") + 1
    command = lines[shrunk].split()
    assert command[:4] == ["python", "-m", "presence_actors", "simulate"]
    only = parse_numbers(command[command.index("--only") + 1])
    assert 1 <= len(only) <= 4, text
    first_shrunk = lines[lines.index("  then:") + 1]
    _, replayed = simulate(attrs.evolve(invocation, only=only), Settings())
    assert replayed.first is not None
    assert first_shrunk.strip() == replayed.first.describe()


# --- the command line ---------------------------------------------------------------------


def test_cluster_faults_are_named_but_refused_until_the_simulation_runs_a_cluster(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["simulate", "--seed", "1", "--steps", "5", "--faults", "node-death"]) == 2
    assert "the fault 'node-death' needs the Redis cluster" in capsys.readouterr().err
    assert main(["simulate", "--seed", "1", "--steps", "5", "--faults", "crash,nap"]) == 2
    assert "unknown fault 'nap': expected all, none or some of crash," in capsys.readouterr().err
    assert parse_faults("all") == AVAILABLE_FAULTS
    assert "redis-outage" not in AVAILABLE_FAULTS


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "5"], "the following arguments are required: --seed"),
        (["--seed", "1", "--steps", "0"], "'0' is not an integer >= 1"),
        (["--seed", "1", "--steps", "5", "--users", "251"], "--users 251: at most 250"),
        (["--seed", "1", "--steps", "5", "--only", "3,x"], "'x' is not an event number"),
        (["--seed", "1", "--steps", "5", "--pace", "-1"], "'-1' is not a positive number"),
    ],
)
def test_bad_simulate_arguments_are_refused_in_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", *args]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1


def test_a_violation_exits_1_with_the_shrunk_trace(tmp_path: Path) -> None:
    """A planted bug in a subprocess (through sitecustomize): the command prints the
    shrunk trace and the exact replay command, and exits 1."""
    (tmp_path / "sitecustomize.py").write_text(
        "from presence_actors.actors import user_state\n"
        "from presence_actors.protocol import Logout\n"
        "user_state.detach = lambda s, h, n, r: user_state.request(s, h, Logout(), n, r)\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "PYTHONHASHSEED": "0"}
    args = ["--seed", "2", "--steps", "200", "--users", "3"]
    done = subprocess.run(
        [sys.executable, "-m", "presence_actors", "simulate", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "  VIOLATIONS" in done.stdout
    assert "\nshrunk: " in done.stdout
    replay = done.stdout.split("replay exactly:\n  ")[1].strip()
    assert replay.startswith("python -m presence_actors simulate --seed 2 --steps 200 --users 3")
    assert " --only " in replay
    again = subprocess.run(
        [sys.executable, *replay.split()[1:]],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert again.returncode == 1
    shrunk_first = done.stdout.split("  then:\n")[1].splitlines()[0].strip()
    assert shrunk_first in again.stdout


def test_visibility_defaults_follow_the_config(tmp_path: Path) -> None:
    """--config is read (and only it: the environment is ignored) and --fanout wins."""
    config = tmp_path / "sim.toml"
    config.write_text('[presence]\ndefault_visibility = "contacts"\ngrace_period = "3s"\n')
    done = run_cli(
        "--seed",
        "4",
        "--steps",
        "150",
        "--users",
        "3",
        "--config",
        str(config),
        "--fanout",
        "contacts",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no violation" in done.stdout
    assert Visibility.CONTACTS.value == "contacts"


def test_a_policy_request_lost_with_its_session_is_judged_by_what_the_store_keeps() -> None:
    # Found by test_simulation_examples' property in CI: unblocking oneself changes
    # nothing, the session dropped before the answer, and the checker took the engine's
    # "everyone" (the default in force) for a value the store should hold.
    schedule = schedule_of(
        2,
        ev.Connect(at=0.0, user=0, device=0),
        ev.Block(at=1.0, user=0, device=0, target=0, on=False),
        ev.Drop(at=1.0, user=0, device=0),
    )
    assert invariants_broken(schedule) == set()


def test_an_identify_at_the_moment_its_user_turns_away_is_judged_as_activity() -> None:
    """Found by example 1 of docs/SIMULATION.md (hypothesis): u1 turns away at 300 s
    (away_after) and sends an identify at that very moment. Identify is activity: the
    engine brings u1 back online without pushing it to the session that sent it (it
    got the reply), so that client knows it is online. The simulation kept the
    client's own view at away and reported a view that lagged for ever."""
    schedule = schedule_of(
        3,
        ev.Connect(0.0, 1, 0),
        ev.Crash(107.0, 0),
        ev.Connect(167.0, 0, 0),
        ev.Connect(251.0, 0, 0),
        ev.Identify(300.0, 1, 0, "ann"),
    )
    assert invariants_broken(schedule) == set()
