"""The registry's side of the cluster (``cluster.redis_url``): reports out, views in.

Owned by the registry task. A user actor's ``Publish`` is this node's share of
the user: it becomes a report for the link, which merges it in Redis with the
other nodes' shares; the merged view comes back as :class:`Merged` (here and on
every node that watches the user) and is what the directory shows and the
fan-out pushes. Versions only grow, so a view older than one already applied
(a pub/sub echo of this node's own change, a read that raced a change) is
ignored.

What the directory holds: in ``everyone`` fan-out every user (the node takes
every change, and reads them all when it joins); in ``contacts`` fan-out the
users some session here follows, counted here (its own user, its contacts,
its subscriptions): the link subscribes to exactly those, and a user no
longer followed leaves the directory. Reads about anyone else go to Redis.

While Redis is away (``link.connected`` is false) a change is shown here as
this node sees it, and reported when Redis is back; the link then reads again
what is watched, and watchers are pushed whatever differs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from attrs import define

from ..cluster.wire import MergedView, Report
from ..codec import make_push
from ..model import Status, UserView
from .directory import Directory
from .fanout import Fanout
from .messages import ActorMessage, SyncProfile
from .policy import Policy
from .session import SessionHandle, Watches
from .user_state import Publish

if TYPE_CHECKING:
    from ..cluster.link import ClusterLink


@define
class _Waiter:
    """Something to finish once the views of ``users`` are here."""

    users: set[str]
    then: Callable[[], None]


class ClusterSide:
    def __init__(
        self,
        link: ClusterLink,
        directory: Directory,
        fanout: Fanout,
        policy: Policy,
        *,
        contacts_mode: bool,
        now_ms: Callable[[], int],
        has_actor: Callable[[str], bool],
        tell: Callable[[str, ActorMessage], None],
        actor_profile: Callable[[str], tuple[str | None, str | None] | None],
    ) -> None:
        self.link = link
        self._directory = directory
        self._fanout = fanout
        self._policy = policy
        self.contacts_mode = contacts_mode
        self._now_ms = now_ms
        self._has_actor = has_actor
        self._tell = tell
        self._actor_profile = actor_profile
        self._versions: dict[str, int] = {}
        self._absent: set[str] = set()  # read from Redis, which does not know them
        self._seen_in_resync: set[str] = set()
        self._interest: Counter[str] = Counter()
        self._present: Counter[str] = Counter()  # MODE sessions here per user
        self._waiters: list[_Waiter] = []

    # --- out ------------------------------------------------------------------------

    def report(self, publish: Publish) -> bool:
        """Hand this node's share of the user to the link; True when the node must
        show it itself meanwhile (Redis is away)."""
        view, public = publish.view, publish.public
        profile = (view.username, view.status_message) if publish.profile_changed else None
        self.link.report(
            Report(
                view.user_id,
                view.status,
                view.devices,
                view.last_seen,
                publish.alive,
                profile,
                publish.cause,
                (public.username, public.status_message),
            )
        )
        return not self.link.connected

    # --- in -------------------------------------------------------------------------

    def merged(self, merged: MergedView, cause: SessionHandle | None) -> None:
        user = merged.user_id
        if merged.version <= self._versions.get(user, 0):
            return  # an echo of what was applied, or overtaken
        if not self._keeps(user):
            return
        self._versions[user] = merged.version
        self._directory.put(merged.view, merged.public)
        if merged.push_own or merged.push_public:
            stamp = self._now_ms()
            shown = make_push(merged.public, stamp) if merged.push_public else None
            own = (
                shown
                if merged.public is merged.view
                else make_push(merged.view, stamp)
                if merged.push_own
                else None
            )
            self._fanout.add(user, shown, own, cause)
        self._sync_profile(merged.view)

    def seeded(
        self, views: Iterable[MergedView], asked: Iterable[str], *, complete: bool = False
    ) -> None:
        """Views read from Redis: newer ones replace the directory's, and watchers are
        pushed what differs from what they were shown (a rejoin after an outage).

        A user asked for that Redis does not know any more (it lost its data), or
        after a complete read any user not read, is shown offline if it was shown
        online: no ghost of a user who left while Redis was away.
        """
        views = list(views)
        if complete:
            self._vanished(self._seen_in_resync)
            self._seen_in_resync = set()
        else:
            self._seen_in_resync.update(asked)
        self._vanished(set(asked) - {merged.user_id for merged in views}, only=True)
        for merged in views:
            user = merged.user_id
            if merged.version <= self._versions.get(user, 0) or not self._keeps(user):
                continue
            before = self._directory.get(user)
            public_before = self._directory.public(user)
            self._versions[user] = merged.version
            self._directory.put(merged.view, merged.public)
            if before is not None and public_before is not None:
                own = before.pushed_part() != merged.view.pushed_part()
                shown = public_before.pushed_part() != merged.public.pushed_part()
                if own or shown:
                    stamp = self._now_ms()
                    self._fanout.add(
                        user,
                        make_push(merged.public, stamp) if shown else None,
                        make_push(merged.view, stamp) if own else None,
                        None,
                    )
            self._sync_profile(merged.view)
        done = set(asked)
        self._absent.update(done - self._versions.keys())
        if done and self._waiters:
            for waiter in self._waiters:
                waiter.users -= done
            finished = [w for w in self._waiters if not w.users]
            self._waiters = [w for w in self._waiters if w.users]
            for waiter in finished:
                waiter.then()

    def _vanished(self, known: set[str], *, only: bool = False) -> None:
        """Users shown online here whom Redis no longer has (``only``: these users;
        else every user but ``known``), and who have no session on this node."""
        if only:
            gone = list(known)
        else:
            gone = [v.user_id for v in self._directory.views() if v.user_id not in known]
        for user in gone:
            view = self._directory.get(user)
            if view is None or not view.online or self._has_actor(user):
                continue
            offline = UserView(
                user, Status.OFFLINE, view.username, view.status_message, view.last_seen
            )
            public = self._directory.public(user) or view
            shown = UserView(
                user, Status.OFFLINE, public.username, public.status_message, view.last_seen
            )
            self._versions.pop(user, None)
            self._directory.put(offline, shown)
            stamp = self._now_ms()
            self._fanout.add(user, make_push(shown, stamp), make_push(offline, stamp), None)

    def rejoined(self, fresh: bool) -> None:
        """Redis lost its data: versions start again from 1."""
        if fresh:
            self._versions.clear()
            self._absent.clear()

    def _keeps(self, user: str) -> bool:
        return not self.contacts_mode or user in self._interest or self._has_actor(user)

    def _sync_profile(self, view: UserView) -> None:
        if self.link.publisher.changing_profile(view.user_id):
            return  # what this node set is newer than what Redis shows yet
        profile = self._actor_profile(view.user_id)
        if profile is not None and profile != (view.username, view.status_message):
            self._tell(view.user_id, SyncProfile(view.username, view.status_message))

    # --- what this node watches (contacts fan-out) ------------------------------------

    def session_added(self, session: SessionHandle) -> None:
        if not self.contacts_mode or session.watches is not Watches.MODE:
            return
        user = session.user_id
        self._present[user] += 1
        if self._present[user] == 1:
            self.watch([user, *self._policy.contact_list(user)])

    def session_removed(self, session: SessionHandle, subscriptions: Iterable[str]) -> None:
        if not self.contacts_mode:
            return
        self.unwatch(subscriptions)
        if session.watches is not Watches.MODE:
            return
        user = session.user_id
        self._present[user] -= 1
        if self._present[user] <= 0:
            del self._present[user]
            self.unwatch([user, *self._policy.contact_list(user)])

    def contacts_changed(self, user: str, before: set[str], after: set[str]) -> None:
        """``user``'s contacts changed: its sessions here follow others now."""
        if self.contacts_mode and user in self._present:
            # The contacts' side is told too (the relation is symmetric).
            self.watch(after - before)
            self.unwatch(before - after)

    def watch(self, users: Iterable[str]) -> None:
        if not self.contacts_mode:
            return
        users = list(users)
        for user in users:
            self._interest[user] += 1
        self.link.watch(users)

    def unwatch(self, users: Iterable[str]) -> None:
        if not self.contacts_mode:
            return
        users = list(users)
        for user in users:
            left = self._interest[user] - 1
            if left > 0:
                self._interest[user] = left
                continue
            self._interest.pop(user, None)
            self._absent.discard(user)
            if not self._has_actor(user):
                self._versions.pop(user, None)
                self._directory.remove(user)
        self.link.unwatch(users)

    def missing(self, users: Iterable[str]) -> set[str]:
        """The users among ``users`` this node has no view of yet."""
        return {u for u in users if u not in self._versions and u not in self._absent}

    def when_seeded(self, users: set[str], then: Callable[[], None]) -> None:
        """Run ``then`` once views of ``users`` have been read (now, if they have)."""
        users = self.missing(users)
        if not users:
            then()
        else:
            self._waiters.append(_Waiter(users, then))

    # --- what the link asks -----------------------------------------------------------

    def local_reports(
        self, states: Iterable[tuple[UserView, int | None]], *, with_profile: bool
    ) -> list[Report]:
        """Every local user's share again (a rejoin), from its actor's last view; with
        its profile when Redis lost it."""
        return [
            Report(
                view.user_id,
                view.status,
                view.devices,
                view.last_seen,
                alive,
                (view.username, view.status_message) if with_profile else None,
            )
            for view, alive in states
            if not (view.status is Status.OFFLINE and not view.devices)
        ]
