"""UserActor: one task per user that has a session or a pending grace period.

The actor is a loop over its inbox that owns the user's :class:`UserState`.
Its timers (heartbeat deadlines, away detection, the grace period, a held-back
push) come down to one next deadline computed from its state and its sessions'
handles: a bare heartbeat, answered by the engine without visiting the actor,
moves it by stamping ``SessionHandle.last_message``; a reconnect cancels the
grace period by removing it. The actor keeps an alarm set no later than that deadline; the
alarm delivers a :class:`Tick` into the inbox, in order with everything else,
and the actor fires whatever is due at that moment.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import trio

from ..persistence.intents import Intent
from ..protocol import Error, ErrorCode
from . import user_state as rules_
from .alarms import Alarms
from .messages import (
    ActorMessage,
    Attach,
    Detach,
    RegistryMessage,
    Request,
    Retiring,
    Seen,
    SyncProfile,
    Tick,
    Told,
)
from .user_state import (
    CloseSession,
    Deliver,
    Outcome,
    Persist,
    Rules,
    UserState,
)

# Messages handled per wake-up before yielding, so one busy user cannot starve others.
DRAIN_BATCH = 32


class Mailbox(Protocol):
    """Where the actor tells the registry about its sessions and changes."""

    async def tell(self, message: RegistryMessage) -> None: ...


class Writer(Protocol):
    """The persistence intake."""

    @property
    def problem(self) -> str | None: ...

    async def submit(self, intent: Intent) -> None: ...

    def submit_nowait(self, intent: Intent) -> None: ...

    def free_slots(self) -> int: ...


class UserActor:
    """Owns one user's presence; restartable from the last state it committed."""

    def __init__(
        self,
        state: UserState,
        inbox: trio.MemoryReceiveChannel[ActorMessage],
        rules: Rules,
        registry: Mailbox,
        writer: Writer,
        alarms: Alarms,
        ring: Callable[[], None],
    ) -> None:
        self.state = state
        self.processed = 0  # messages from the registry (ticks are not counted)
        self._inbox = inbox
        self._rules = rules
        self._registry = registry
        self._writer = writer
        self._alarms = alarms
        self.ring = ring  # the alarm task calls it: a Tick into this actor's inbox
        self._retire_asked_at: int | None = None

    @property
    def name(self) -> str:
        return self.state.user_id

    @property
    def deadline(self) -> float:
        """When a timer of this user fires next, as of now (the alarm task asks too).

        A read of the state this actor committed and of its sessions' handles;
        heartbeats the actor never saw move it later.
        """
        return rules_.next_deadline(self.state, trio.current_time(), self._rules)

    async def run(self) -> None:
        """Serve the inbox until the registry closes it (the actor was retired).

        Each message is applied completely (state, then effects in order) before
        the next. An exception leaves ``self.state`` at the last committed
        state, so calling ``run`` again resumes from there, timers included: a
        restart sets the alarm again (the crash may have spent the one that rang).
        """
        self._alarms.ensure(self.state.user_id, self.deadline, self)
        while True:
            try:
                message = await self._inbox.receive()
            except trio.EndOfChannel:
                return
            await self._handle(message)
            for _ in range(DRAIN_BATCH):
                try:
                    message = self._inbox.receive_nowait()
                except trio.WouldBlock:
                    break
                except trio.EndOfChannel:
                    return
                await self._handle(message)
            self._alarms.ensure(self.state.user_id, self.deadline, self)
            if self.state.idle and self._retire_asked_at != self.processed:
                self._retire_asked_at = self.processed
                await self._registry.tell(Retiring(self.state.user_id, self.processed))

    async def _handle(self, message: ActorMessage) -> None:
        state, now, rules = self.state, trio.current_time(), self._rules
        if isinstance(message, Tick):
            if rules.before_transition is not None:
                rules.before_transition(state.user_id, message)
            await self._apply(rules_.expire(state, now, rules))  # a no-op if nothing is due
            return
        if not isinstance(message, Told):
            self.processed += 1
        try:
            if rules.before_transition is not None:
                rules.before_transition(state.user_id, message)
            match message:
                case Told(session, body) | Request(session, body):  # the most frequent first
                    outcome = rules_.request(state, session, body, now, rules)
                case Attach(session):
                    outcome = rules_.attach(state, session, now, rules)
                case Detach(session):
                    outcome = rules_.detach(state, session, now, rules)
                case Seen(session):
                    outcome = rules_.seen(state, session, now, rules)
                case SyncProfile(username, status_message):
                    outcome = rules_.sync_profile(state, username, status_message)
        except Exception:
            if isinstance(message, Request | Told | Attach):
                # An attach refused this way is the session's first message: its
                # transport closes it, rather than wait for a welcome for ever.
                request = None if isinstance(message, Attach) else message.message.request_id
                message.session.deliver(
                    Error(
                        timestamp=rules.clock.ms(now),
                        request_id=request,
                        code=ErrorCode.INTERNAL,
                        message="internal error; the request was not applied",
                    )
                )
            raise
        await self._apply(outcome)

    async def _apply(self, outcome: Outcome) -> None:
        self.state, effects = outcome
        for effect in effects:
            if isinstance(effect, Persist):
                # Never waits: the writer holds what a failing store cannot take.
                self._writer.submit_nowait(effect.intent)
            elif isinstance(effect, Deliver):
                session = effect.session
                if not session.closing and not session.deliver(effect.message):
                    # A full outbox: the session is lost now, not when its
                    # (possibly stuck) transport gets around to detaching.
                    now = trio.current_time()
                    await self._apply(rules_.detach(self.state, session, now, self._rules))
            elif isinstance(effect, CloseSession):
                effect.session.request_close(effect.code, effect.reason)
            else:  # Accepted, Ended, Publish
                await self._registry.tell(effect)
