"""One task: the sessions of one partition, their reorder buffer, and their cohort windows. Pure.

The adapter offers events (after decoding) and moves the watermark; the task buffers each event
until the watermark is past its time, then feeds the session's instants to the state machine
(:mod:`streamer.funnel.session`) in event-time order. So any arrival order within the allowed
lateness gives the same numbers, and the work per event is O(log n) (two heaps) with O(1)
state machine work.

Everything the task holds is in :meth:`Task.checkpoint` (dirty sessions, deleted sessions,
changed windows) and comes back whole through :meth:`Task.restore`; the adapter stores it with
the input offsets it reflects, so a restart resumes exactly where the checkpoint was taken.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from enum import Enum
from itertools import groupby
from typing import Any, Protocol

from streamer.funnel.identity import instant_units
from streamer.funnel.inactivity import (
    IDENTITY_MEMORY_MS,
    following_number,
    session_name,
    starts_session,
)
from streamer.funnel.lifecycle import Lifecycle, UserRecord
from streamer.funnel.session import (
    NEVER,
    Abandoned,
    CompiledFunnel,
    Kind,
    Outcome,
    Progress,
    StoredEvent,
    apply_instant,
    expire_attempt,
)
from streamer.funnel.windows import NEW_SESSIONS, Partial, WindowCounts, window_start

__all__ = [
    "RECENT_IDS",
    "AbandonmentNotice",
    "Offer",
    "SessionState",
    "Task",
    "TaskOutput",
    "UnitEvent",
    "WakeHeap",
    "WakeQueue",
    "event_digest",
]

# Where a buffered event keeps the user id it carried, when the task forwards events to their
# units: no funnel field can name it (fields match ``[A-Za-z0-9_]+`` after their prefix).
USER_FIELD = "@user_id"

# How many of a session's latest event ids are remembered to drop repeated ones (retries).
RECENT_IDS = 16
_DIGEST = 8


def event_digest(event_id: str) -> bytes:
    """A stable 8-byte digest of an event id (Python's hash() differs between processes)."""
    return hashlib.blake2b(event_id.encode(), digest_size=_DIGEST).digest()


class Offer(Enum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    LATE = "late"


@dataclass(slots=True)
class SessionState:
    """All a task keeps of one session."""

    session_id: str
    progress: list[Progress]  # one per funnel
    # Buffered, not behind the watermark yet: a heap of (time, sequence, event), so releasing
    # costs O(log n) per event however many wait.
    pending: list[tuple[int, int, StoredEvent]] | None = None
    recent_ids: bytes = b""  # digests of the latest RECENT_IDS accepted event ids
    last_event_ms: int = NEVER
    user_id: str | None = None
    wake_ms: int = NEVER  # the live entry of this session in the task's wake heap
    # Event time of the first event the watermark released: the session counts as new in
    # that window (by event time, so whatever order its events arrived in).
    started_ms: int = NEVER
    # An identity's events (no session id: a plan's sessions rule) are cut into sessions by
    # this gap (0: a session id's, never cut); ``progress`` is then of its session number
    # ``session_number``, whose last released event was at ``released_ms``.
    inactivity_ms: int = 0
    session_number: int = 0
    released_ms: int = NEVER
    name: str = ""  # the published session id, where it is not the key (an identity's)
    # User funnels: the user the session is known by at its last released instant
    # (identity rule 2); stored only once it has one, so session funnels' state is unchanged.
    known_user: str | None = None

    @property
    def published_id(self) -> str:
        return self.name or self.session_id

    def seen(self, digest: bytes) -> bool:
        ids = self.recent_ids
        at = ids.find(digest)  # one C search; a hit must start on a digest's boundary
        while at >= 0:
            if at % _DIGEST == 0:
                return True
            at = ids.find(digest, at + 1)
        return False

    def remember(self, digest: bytes) -> None:
        self.recent_ids = (self.recent_ids + digest)[-RECENT_IDS * _DIGEST :]

    def buffered(self) -> list[StoredEvent]:
        """The buffered events in time order."""
        return [event for _, _, event in sorted(self.pending or ())]

    def to_json(self) -> list[Any]:
        return [
            [p.to_json() for p in self.progress],
            [e.to_json() for e in self.buffered()],
            self.recent_ids.hex(),
            self.last_event_ms,
            self.user_id,
            self.started_ms,
            *self._stored_tail(),
        ]

    def encodable(self) -> list[Any]:
        """:meth:`to_json` for ``orjson.dumps`` only: buffered events as their JSON encoded
        once (a session is stored by every checkpoint that finds it changed)."""
        return [
            [p.to_json() for p in self.progress],
            [e.json_fragment() for e in self.buffered()],
            self.recent_ids.hex(),
            self.last_event_ms,
            self.user_id,
            self.started_ms,
            *self._stored_tail(),
        ]

    def _stored_tail(self) -> list[Any]:
        """Fields stored only where set, so a plain session's state is stored as before they
        existed: the user it is known by (user funnels), then the sessions-by-inactivity
        fields (an identity's)."""
        if self.inactivity_ms or self.name:
            return [
                self.known_user,
                self.inactivity_ms,
                self.session_number,
                self.released_ms,
                self.name,
            ]
        return [] if self.known_user is None else [self.known_user]

    @classmethod
    def from_json(cls, session_id: str, raw: list[Any]) -> SessionState:
        events = [StoredEvent.from_json(e) for e in raw[1]]
        identity: list[Any] = raw[7:11] if len(raw) > 7 else [0, 0, NEVER, ""]
        return cls(
            session_id,
            [Progress.from_json(p) for p in raw[0]],
            [(e.at_ms, index, e) for index, e in enumerate(events)] or None,  # sorted: a heap
            bytes.fromhex(raw[2]),
            int(raw[3]),
            raw[4],
            # A session stored before this field existed was counted when first offered.
            started_ms=int(raw[5]) if len(raw) > 5 else 0,
            known_user=raw[6] if len(raw) > 6 else None,
            inactivity_ms=int(identity[0]),
            session_number=int(identity[1]),
            released_ms=int(identity[2]),
            name=identity[3],
        )


@dataclass(frozen=True, slots=True)
class AbandonmentNotice:
    """An abandonment (``order_ms`` None) or its retraction, for the adapter to publish."""

    funnel: int
    session_id: str
    user_id: str | None
    abandoned: Abandoned
    order_ms: int | None = None


@dataclass(frozen=True, slots=True)
class UnitEvent:
    """A released event on its way to the task of its unit (user funnels): ``sequence`` numbers
    the task's released events in event-time order (ties by session and event id), the same
    after any restart from a checkpoint, so the unit side skips copies by it."""

    sequence: int
    unit: str
    user_id: str | None
    event: StoredEvent


@dataclass
class TaskOutput:
    partials: list[Partial] = field(default_factory=list)
    abandonments: list[AbandonmentNotice] = field(default_factory=list)
    forwards: list[UnitEvent] = field(default_factory=list)


@dataclass
class Checkpoint:
    """What changed since the last checkpoint, as values to store and keys to delete (the
    sessions' values are for ``orjson.dumps``: they hold pre-encoded fragments)."""

    sessions: dict[str, list[Any]] = field(default_factory=dict)
    deleted_sessions: set[str] = field(default_factory=set)
    windows: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)
    deleted_windows: set[tuple[int, int]] = field(default_factory=set)
    watermark_ms: int = NEVER
    forwarded: int = 0  # events released to their units so far (user funnels)
    # Lifecycle funnels (docs/lifecycle.md), by funnel name: the cohort figures (small, whole
    # each time) and the user records changed since (every record when full).
    lifecycle: dict[str, dict[str, Any]] = field(default_factory=dict)
    lifecycle_users: dict[str, dict[str, list[Any]]] = field(default_factory=dict)


class WakeQueue(Protocol):
    """When each session next needs the clock: a step timeout, or being forgotten."""

    def move(self, session_id: str, old_ms: int, new_ms: int) -> None:
        """The session's wake moved from ``old_ms`` to ``new_ms`` (``NEVER``: none)."""

    def pop_due(self, before_ms: int) -> tuple[int, str] | None:
        """Take out the earliest entry before ``before_ms`` (None: none). It may be stale:
        the task acts only if the session's ``wake_ms`` is still that time."""


class WakeHeap:
    """The in-memory :class:`WakeQueue`: a heap with lazy deletion (a moved session's old
    entry stays, and is skipped when it comes up)."""

    __slots__ = ("_heap",)

    def __init__(self) -> None:
        self._heap: list[tuple[int, str]] = []

    def move(self, session_id: str, old_ms: int, new_ms: int) -> None:
        if new_ms != NEVER:
            heapq.heappush(self._heap, (new_ms, session_id))

    def pop_due(self, before_ms: int) -> tuple[int, str] | None:
        heap = self._heap
        return heapq.heappop(heap) if heap and heap[0][0] < before_ms else None


class Task:
    def __init__(
        self,
        funnels: tuple[CompiledFunnel, ...],
        partition: int,
        *,
        retention_ms: int,
        sessions: MutableMapping[str, SessionState] | None = None,
        wakes: WakeQueue | None = None,
        forwards_units: bool = False,
        lifecycle_users: Callable[[str], MutableMapping[str, UserRecord]] | None = None,
    ) -> None:
        """``sessions`` and ``wakes`` default to memory (a dict, a heap); a user funnel's
        task may keep them on disk instead (``streamer.pipeline.sessions.unit_store``), and
        ``lifecycle_users`` gives each lifecycle funnel's user records by funnel name (default:
        a dict each; the unit store's key space of its own, decision 0009's addendum)."""
        self.funnels = funnels
        # User funnels run: every released event also goes to its unit (see ``UnitEvent``).
        self.forwards_units = forwards_units
        self.forwarded = 0
        self._released: list[tuple[int, str, str, str, str | None, StoredEvent]] = []
        self._forwards: list[UnitEvent] = []
        self.partition = partition
        # A funnel counting units keeps a unit's state at least a window, so a unit counted in
        # a window is never forgotten before the window can get no more entries (spec:
        # "Uniques and totals").
        self.retention_ms = max(
            retention_ms, *(funnel.window_ms for funnel in funnels if funnel.uniques), 0
        )
        self.watermark_ms = NEVER
        self.sessions: MutableMapping[str, SessionState] = {} if sessions is None else sessions
        self.windows: dict[tuple[int, int], WindowCounts] = {}
        self.open_sessions: Counter[tuple[int, int]] = Counter()  # (funnel, stage) -> open
        self._pending: list[tuple[int, int, str]] = []  # (event time, sequence, session)
        self._sequence = 0
        self._wakes: WakeQueue = WakeHeap() if wakes is None else wakes
        self._dirty_sessions: set[str] = set()
        self._deleted_sessions: set[str] = set()
        self._dirty_windows: set[tuple[int, int]] = set()  # changed since the last drain
        self._unsaved_windows: set[tuple[int, int]] = set()  # changed since the last checkpoint
        self._deleted_windows: set[tuple[int, int]] = set()
        self._notices: list[AbandonmentNotice] = []
        # A unit task's lifecycle funnels (only user funnels declare one), fed each unit's
        # released events: their records outlive the unit's state, so they are kept apart.
        self.lifecycles: dict[str, Lifecycle] = {
            funnel.name: Lifecycle(
                funnel.definition.lifecycle,
                None if lifecycle_users is None else lifecycle_users(funnel.name),
            )
            for funnel in funnels
            if funnel.definition.lifecycle is not None
        }
        self._lifecycle_changed: set[str] = set()  # units fed since the last checkpoint

    # --- input ---------------------------------------------------------------------------
    def offer(
        self,
        session_id: str,
        event: StoredEvent,
        user_id: str | None = None,
        source: str = "",
        inactivity_ms: int | None = None,
    ) -> Offer:
        """Take one event of ``session_id``: buffered until the watermark passes it. It counts
        at once in the volume of its event-time window (``source``: the input it came from).
        ``inactivity_ms``: ``session_id`` is an identity's key, cut into sessions by that gap."""
        at_ms = event.at_ms  # (each field is read once: this runs per event)
        digest = event_digest(event.event_id)
        state = self.sessions.get(session_id)
        if state is not None and state.seen(digest):
            return Offer.DUPLICATE
        if at_ms < self.watermark_ms:
            return Offer.LATE
        if state is None:
            state = SessionState(session_id, [Progress() for _ in self.funnels])
            if inactivity_ms:
                state.inactivity_ms, state.session_number = inactivity_ms, 1
            self.sessions[session_id] = state
            self._deleted_sessions.discard(session_id)
        state.remember(digest)
        if self.forwards_units and user_id:
            event = _carrying(event, user_id)
        self._sequence = sequence = self._sequence + 1
        pending = state.pending
        if pending is None:
            state.pending = [(at_ms, sequence, event)]
        else:
            heapq.heappush(pending, (at_ms, sequence, event))
        if at_ms > state.last_event_ms:
            state.last_event_ms = at_ms
        if user_id:
            state.user_id = user_id
        heapq.heappush(self._pending, (at_ms, sequence, session_id))
        self._dirty_sessions.add(session_id)
        self._count_volume(at_ms, (source, event.event_type))
        return Offer.ACCEPTED

    def advance(self, watermark_ms: int) -> None:
        """Move the watermark (never back): apply every buffered instant below it, then decide
        what only time decides (drops, retraction horizons, forgetting idle sessions)."""
        if watermark_ms <= self.watermark_ms:
            return
        self.watermark_ms = watermark_ms
        due: set[str] = set()
        pending = self._pending
        while pending and pending[0][0] < watermark_ms:
            due.add(heapq.heappop(pending)[2])
        for session_id in due:
            state = self.sessions.get(session_id)
            if state is not None:
                self._release(state, watermark_ms)
        if self._released:
            self._number_released()
        for lifecycle in self.lifecycles.values():
            lifecycle.advance(watermark_ms)  # after every event below it
        pop_due = self._wakes.pop_due
        while (entry := pop_due(watermark_ms)) is not None:
            at_ms, session_id = entry
            state = self.sessions.get(session_id)
            if state is not None and state.wake_ms == at_ms:
                self._wake(state, watermark_ms)

    # --- the state machine, per session ----------------------------------------------------
    def _release(self, state: SessionState, watermark_ms: int) -> None:
        buffer = state.pending or []
        ready = []
        while buffer and buffer[0][0] < watermark_ms:
            ready.append(heapq.heappop(buffer)[2])
        state.pending = buffer or None
        if ready and state.started_ms == NEVER:
            state.started_ms = ready[0].at_ms
            self._count_volume(state.started_ms, NEW_SESSIONS)
        if self.forwards_units and ready:
            self._release_to_units(state, ready)
        if self.lifecycles and ready:
            self._feed_lifecycles(state.session_id, ready)
        outcomes: list[Outcome] = []
        if state.inactivity_ms:
            self._release_identity(state, ready, outcomes)
        else:
            self._apply_events(state, ready, outcomes)
        self._dirty_sessions.add(state.session_id)
        self._schedule(state)

    def _feed_lifecycles(self, unit: str, ready: list[StoredEvent]) -> None:
        """A unit's released events, in event-time order, to each lifecycle funnel."""
        for lifecycle in self.lifecycles.values():
            for event in ready:
                lifecycle.apply(unit, event)
        self._lifecycle_changed.add(unit)

    def _apply_events(
        self, state: SessionState, ready: list[StoredEvent], outcomes: list[Outcome]
    ) -> None:
        """Feed released events (in time order) to the state machine, instant by instant."""
        if len(ready) == 1:  # the usual case: one event, one instant, nothing to group
            self._apply_instant(state, ready[0].at_ms, ready, outcomes)
        else:
            for at_ms, group in groupby(ready, key=_at):
                self._apply_instant(state, at_ms, list(group), outcomes)

    # --- sessions by inactivity (streamer.funnel.inactivity) -------------------------------
    def _release_identity(
        self, state: SessionState, ready: list[StoredEvent], outcomes: list[Outcome]
    ) -> None:
        """An identity's released events, cut into its sessions where one is more than the
        inactivity gap after the previous (released in time order: the cut is final)."""
        start = 0
        for index, event in enumerate(ready):
            if starts_session(state.released_ms, event.at_ms, state.inactivity_ms):
                self._apply_events(state, ready[start:index], outcomes)
                start = index
                self._next_session(state, event.at_ms)
            state.released_ms = event.at_ms
        self._apply_events(state, ready[start:], outcomes)

    def _next_session(self, state: SessionState, at_ms: int) -> None:
        """End the identity's current session and start the next at ``at_ms``. The ended one
        gets no more events: if an attempt is still open, its progress moves to a state of
        its own that its step timeouts decide, as any session's (its key, ``<identity>#<number>
        @<last event time>``, stays unique after the numbering starts over)."""
        identity = state.session_id
        if not all(p.at_rest for p in state.progress):
            ended = SessionState(
                f"{identity}#{state.session_number}@{state.released_ms}",
                state.progress,
                last_event_ms=state.released_ms,
                user_id=state.user_id,
                started_ms=state.started_ms,
                name=state.published_id,
            )
            self.sessions[ended.session_id] = ended
            self._deleted_sessions.discard(ended.session_id)
            self._dirty_sessions.add(ended.session_id)
            self._schedule(ended)
        state.progress = [Progress() for _ in self.funnels]
        state.session_number = following_number(state.session_number, state.released_ms, at_ms)
        name = session_name(identity, state.session_number)
        state.name = name if name != identity else ""
        self._count_volume(at_ms, NEW_SESSIONS)

    def _retention_ms(self, state: SessionState) -> int:
        """How long after its last event a state at rest is kept: an identity's, until its
        session number no longer matters."""
        if state.inactivity_ms:
            return max(self.retention_ms, IDENTITY_MEMORY_MS)
        return self.retention_ms

    def _release_to_units(self, state: SessionState, ready: list[StoredEvent]) -> None:
        """Each released event's unit, instant by instant (the identity rules), for
        :meth:`_number_released`."""
        session_id = state.session_id
        for at_ms, group in groupby(ready, key=_at):
            instant = list(group)
            carried = [event.fields.get(USER_FIELD) for event in instant]
            units, state.known_user = instant_units(session_id, state.known_user, carried)
            for unit, user_id, event in zip(units, carried, instant, strict=True):
                self._released.append(
                    (at_ms, session_id, event.event_id, unit, user_id, _without_user(event))
                )

    def _number_released(self) -> None:
        """Number what one watermark step released in event-time order (ties by session and
        event id). Each step releases exactly the buffered events below it, so the numbering
        is that of every accepted event sorted, however the watermark moved: a task restored
        from its checkpoint numbers the events it releases again as before."""
        released, self._released = sorted(self._released, key=_release_order), []
        first = self.forwarded
        self._forwards.extend(
            UnitEvent(first + index, unit, user_id or None, event)
            for index, (_, _, _, unit, user_id, event) in enumerate(released)
        )
        self.forwarded = first + len(released)

    def _apply_instant(
        self, state: SessionState, at_ms: int, instant: list[StoredEvent], outcomes: list[Outcome]
    ) -> None:
        retention_ms = self._retention_ms(state)
        for index, funnel in enumerate(self.funnels):
            progress = state.progress[index]
            result = apply_instant(funnel, progress, at_ms, instant, outcomes, retention_ms)
            if funnel.surveys:
                _join_answers(funnel, progress, at_ms, instant, outcomes)
            if outcomes or result.abandoned is not None:  # else nothing to record
                self._record(index, state, outcomes, result.abandoned)
            if result.retracted is not None:
                abandoned, order_ms = result.retracted
                self._notices.append(
                    AbandonmentNotice(index, state.published_id, state.user_id, abandoned, order_ms)
                )

    def _count_volume(self, at_ms: int, volume_key: tuple[str, str]) -> None:
        """One more of ``volume_key`` (an input's event type, or NEW_SESSIONS) in the window
        of ``at_ms``, for every funnel."""
        windows, dirty, unsaved = self.windows, self._dirty_windows, self._unsaved_windows
        for index, funnel in enumerate(self.funnels):
            key = (index, window_start(at_ms, funnel.window_ms))
            counts = windows.get(key)
            if counts is None:
                counts = windows[key] = WindowCounts.empty(funnel.last_stage + 1)
            volume = counts.volume
            volume[volume_key] = volume.get(volume_key, 0) + 1
            dirty.add(key)
            unsaved.add(key)

    def _wake(self, state: SessionState, watermark_ms: int) -> None:
        outcomes: list[Outcome] = []
        for index, funnel in enumerate(self.funnels):
            abandoned = expire_attempt(funnel, state.progress[index], watermark_ms, outcomes)
            self._record(index, state, outcomes, abandoned)
        self._dirty_sessions.add(state.session_id)
        if (
            state.pending is None
            and all(p.at_rest for p in state.progress)
            and state.last_event_ms + self._retention_ms(state) < watermark_ms
        ):
            del self.sessions[state.session_id]
            self._dirty_sessions.discard(state.session_id)
            self._deleted_sessions.add(state.session_id)
            return
        self._schedule(state)

    def _schedule(self, state: SessionState) -> None:
        wake: int | None = None  # the earliest of the funnels' (no list: this runs per event)
        for progress in state.progress:
            at = progress.wake_ms()
            if at is not None and (wake is None or at < wake):
                wake = at
        if wake is None:
            # Then the session is forgotten; or its buffered events will release it.
            wake = (
                state.last_event_ms + self._retention_ms(state) if state.pending is None else NEVER
            )
        if wake != state.wake_ms:
            self._wakes.move(state.session_id, state.wake_ms, wake)
            state.wake_ms = wake

    def _record(
        self,
        funnel_index: int,
        state: SessionState,
        outcomes: list[Outcome],
        abandoned: Abandoned | None,
    ) -> None:
        funnel = self.funnels[funnel_index]
        size = funnel.window_ms
        for outcome in outcomes:
            key = (funnel_index, window_start(outcome.cohort_ms, size))
            counts = self.windows.get(key)
            if counts is None:
                counts = self.windows[key] = WindowCounts.empty(funnel.last_stage + 1)
            counts.apply(outcome, size)
            if (
                funnel.uniques
                and outcome.kind is Kind.ENTERED
                and state.progress[funnel_index].first_entry_of_unit(outcome.stage, key[1])
            ):
                counts.stages[outcome.stage].units += 1
            self._dirty_windows.add(key)
            self._unsaved_windows.add(key)
            if 0 <= outcome.stage < funnel.last_stage and outcome.kind is not Kind.ANSWERED:
                self.open_sessions[(funnel_index, outcome.stage)] += (
                    1 if outcome.kind is Kind.ENTERED else -1
                )
        outcomes.clear()
        if abandoned is not None:
            self._notices.append(
                AbandonmentNotice(funnel_index, state.published_id, state.user_id, abandoned)
            )

    # --- output ----------------------------------------------------------------------------
    def drain(self) -> TaskOutput:
        """What to publish since the last drain: the whole counts of every changed window
        (each replaces the previous partial of this partition), and abandonment notices.
        Windows whose every cohort is decided are then released from memory."""
        out = TaskOutput(abandonments=self._notices, forwards=self._forwards)
        self._notices = []
        self._forwards = []
        for key in sorted(self._dirty_windows):
            counts = self.windows[key]
            funnel = self.funnels[key[0]].definition
            out.partials.append(
                Partial(funnel.name, key[1], key[1] + funnel.window_ms, self.partition, counts)
            )
        self._dirty_windows.clear()
        for key in [k for k in self.windows if self._final(k)]:
            del self.windows[key]
            self._unsaved_windows.discard(key)
            self._deleted_windows.add(key)
        return out

    def _final(self, key: tuple[int, int]) -> bool:
        definition = self.funnels[key[0]].definition
        return (
            key not in self._dirty_windows
            and key[1] + definition.window_ms + definition.finality_lag_ms <= self.watermark_ms
        )

    def checkpoint(self, *, full: bool = False) -> Checkpoint:
        """What changed since the last checkpoint (the adapter stores it, then acks input);
        with ``full``, every session and window instead (the adapter compacts its log)."""
        saved, session_ids = self.checkpoint_changes(full=full)
        saved.sessions = self.encode_sessions(session_ids)
        return saved

    def checkpoint_changes(
        self, *, full: bool = False, every_session: bool = True
    ) -> tuple[Checkpoint, list[str]]:
        """:meth:`checkpoint` but for the sessions' states: the ids of the sessions it
        stores, for :meth:`encode_sessions` (in slices, if the task does not change
        meanwhile: a whole partition's sessions take hundreds of milliseconds).

        ``full`` without ``every_session``: every window and lifecycle record, but only the
        sessions changed since (and those deleted): a caller whose sessions are on disk
        writes the unchanged ones from there, never listing them all in memory."""
        saved = Checkpoint(watermark_ms=self.watermark_ms, forwarded=self.forwarded)
        if full:
            if every_session:
                session_ids = list(self.sessions)
            else:
                session_ids = list(self._dirty_sessions)
                saved.deleted_sessions = self._deleted_sessions
            saved.windows = {key: counts.to_json() for key, counts in self.windows.items()}
        else:
            session_ids = list(self._dirty_sessions)
            saved.deleted_sessions = self._deleted_sessions
            for key in self._unsaved_windows:
                saved.windows[key] = self.windows[key].to_json()
            saved.deleted_windows = self._deleted_windows
        self._dirty_sessions = set()
        self._deleted_sessions = set()
        self._unsaved_windows = set()
        self._deleted_windows = set()
        for name, lifecycle in self.lifecycles.items():
            users = lifecycle.users
            changed = users if full else self._lifecycle_changed
            saved.lifecycle[name] = lifecycle.to_json()
            saved.lifecycle_users[name] = {
                unit: users[unit].to_json() for unit in changed if unit in users
            }
        self._lifecycle_changed = set()
        return saved, session_ids

    @property
    def unsaved_session_ids(self) -> AbstractSet[str]:
        """Sessions changed since the last checkpoint (a store on disk keeps them cached)."""
        return self._dirty_sessions

    def encode_sessions(self, session_ids: Iterable[str]) -> dict[str, list[Any]]:
        """The stored form of each of ``session_ids`` (:meth:`SessionState.encodable`)."""
        sessions = self.sessions
        return {session_id: sessions[session_id].encodable() for session_id in session_ids}

    # --- recovery ----------------------------------------------------------------------------
    def restore(
        self,
        watermark_ms: int,
        sessions: Iterable[tuple[str, list[Any]]],
        windows: Mapping[tuple[int, int], dict[str, Any]],
        stored_funnels: Sequence[str] | None = None,
    ) -> None:
        """Load what :meth:`checkpoint` stored; memory indexes are rebuilt from it.
        ``stored_funnels`` names the funnels of the stored sessions' progress, in order (None:
        this task's): a funnel added since starts fresh, a removed one's progress is dropped."""
        self.watermark_ms = watermark_ms
        for key, counts in windows.items():
            self.windows[key] = WindowCounts.from_json(counts)
        names = [compiled.definition.name for compiled in self.funnels]
        where = {name: i for i, name in enumerate(stored_funnels or names)}
        for session_id, saved in sessions:
            progress = saved[0]
            if len(progress) != len(names) or stored_funnels is not None:
                aligned = [where.get(name, len(progress)) for name in names]
                saved = [[progress[i] if i < len(progress) else None for i in aligned], *saved[1:]]
            state = SessionState.from_json(session_id, saved)
            self.sessions[session_id] = state
            self._index_pending(state)
            self._count_open(state, 1)
            self._schedule(state)

    def restore_lifecycle(
        self,
        figures: Mapping[str, Mapping[str, Any]],
        users: Mapping[str, Mapping[str, list[Any]]] | None = None,
    ) -> None:
        """Load what :meth:`checkpoint` stored of the lifecycle funnels: each one's figures
        (the latest) and its records (those a store on disk does not hold already). A funnel
        without stored figures starts empty."""
        for name, lifecycle in self.lifecycles.items():
            if name in figures:
                lifecycle.restore(figures[name])
            for unit, record in (users or {}).get(name, {}).items():
                lifecycle.users[unit] = UserRecord.from_json(record)

    def index_record(self) -> dict[str, Any]:
        """What :meth:`restore` rebuilds from every session, as JSON: the windows, the open
        attempts per (funnel, stage) and the buffered events' times per session. A store
        that keeps the sessions on disk keeps this beside them, so that :meth:`resume` need
        not read every session (docs/decisions/0009-open-units-on-disk.md)."""
        record: dict[str, Any] = {
            "windows": [
                [f, start, counts.to_json()] for (f, start), counts in self.windows.items()
            ],
            "open": [[f, stage, n] for (f, stage), n in self.open_sessions.items() if n],
            "pending": [[at_ms, session_id] for at_ms, _, session_id in self._pending],
        }
        if self.lifecycles:  # their figures (the user records are stored apart)
            record["lifecycle"] = {name: core.to_json() for name, core in self.lifecycles.items()}
        return record

    def resume(self, watermark_ms: int, record: Mapping[str, Any]) -> None:
        """:meth:`restore` with the sessions already in ``self.sessions`` and their wakes in
        the wake queue (on disk), and the rest from :meth:`index_record`."""
        self.watermark_ms = watermark_ms
        for f, start, counts in record["windows"]:
            self.windows[(int(f), int(start))] = WindowCounts.from_json(counts)
        for f, stage, count in record["open"]:
            self.open_sessions[(int(f), int(stage))] += int(count)
        for at_ms, session_id in record["pending"]:
            self._sequence += 1
            heapq.heappush(self._pending, (int(at_ms), self._sequence, str(session_id)))
        # The figures; the lifecycle's user records are on the disk with the units.
        self.restore_lifecycle(record.get("lifecycle", {}))

    def replace_stored(self, session_id: str, saved: list[Any] | None) -> None:
        """Put one session as a later checkpoint stored it (None: it was deleted) over the one
        resumed, keeping the indexes true (a resumed task catching up with newer deltas)."""
        old = self.sessions.get(session_id)
        wake_ms = NEVER
        if old is not None:
            self._count_open(old, -1)
            wake_ms = old.wake_ms
            if saved is None:
                self._wakes.move(session_id, wake_ms, NEVER)
                del self.sessions[session_id]
        if saved is None:
            return
        state = SessionState.from_json(session_id, saved)
        state.wake_ms = wake_ms  # so that _schedule moves the old entry, not adds one beside
        self.sessions[session_id] = state
        self._index_pending(state)
        self._count_open(state, 1)
        self._schedule(state)

    def _count_open(self, state: SessionState, sign: int) -> None:
        for index, progress in enumerate(state.progress):
            if progress.attempt is not None:
                self.open_sessions[(index, progress.attempt.stage)] += sign

    def _index_pending(self, state: SessionState) -> None:
        """Put a loaded session's buffered events in the task's release heap."""
        for at_ms, _, _ in state.pending or ():
            self._sequence += 1
            heapq.heappush(self._pending, (at_ms, self._sequence, state.session_id))

    def adopt(self, other: Task, funnel_indexes: Sequence[int]) -> None:
        """Take funnel ``j`` of ``other`` as this task's funnel ``funnel_indexes[j]``: its
        sessions' progress and its windows not final yet. ``other`` read the same input up to
        the same offsets for funnels added since this task's checkpoint, and stands at the
        same watermark: afterwards this task is what it would be had they always been here."""
        assert other.watermark_ms == self.watermark_ms, "the catch-up must stop at our watermark"
        other.drain()  # history's outputs were published long ago; final windows go
        for key, counts in other.windows.items():
            ours = (funnel_indexes[key[0]], key[1])
            self.windows[ours] = counts
            self._dirty_windows.add(ours)
            self._unsaved_windows.add(ours)
            self._deleted_windows.discard(ours)
        for session_id, theirs in other.sessions.items():
            state = self.sessions.get(session_id)
            if state is None:
                if all(p.at_rest for p in theirs.progress) and theirs.pending is None:
                    continue  # nothing of it is open: forgotten here already
                state = SessionState(
                    session_id,
                    [Progress() for _ in self.funnels],
                    list(theirs.pending) if theirs.pending else None,
                    theirs.recent_ids,
                    theirs.last_event_ms,
                    theirs.user_id,
                    started_ms=theirs.started_ms,
                    inactivity_ms=theirs.inactivity_ms,
                    session_number=theirs.session_number,
                    released_ms=theirs.released_ms,
                    name=theirs.name,
                )
                self.sessions[session_id] = state
                self._deleted_sessions.discard(session_id)
                self._index_pending(state)
            for j, index in enumerate(funnel_indexes):
                progress = state.progress[index] = theirs.progress[j]
                if progress.attempt is not None:
                    self.open_sessions[(index, progress.attempt.stage)] += 1
            self._dirty_sessions.add(session_id)
            self._schedule(state)

    @property
    def buffered_events(self) -> int:
        return len(self._pending)


def _at(event: StoredEvent) -> int:
    return event.at_ms


def _release_order(
    released: tuple[int, str, str, str, str | None, StoredEvent],
) -> tuple[int, str, str]:
    return released[0], released[1], released[2]


def _carrying(event: StoredEvent, user_id: str) -> StoredEvent:
    """``event`` with the user id it carried, kept until its release decides its unit."""
    return StoredEvent(
        event.at_ms, event.event_id, event.event_type, {**event.fields, USER_FIELD: user_id}
    )


def _without_user(event: StoredEvent) -> StoredEvent:
    if USER_FIELD not in event.fields:
        return event
    fields = {name: value for name, value in event.fields.items() if name != USER_FIELD}
    return StoredEvent(event.at_ms, event.event_id, event.event_type, fields)


def _join_answers(
    funnel: CompiledFunnel,
    progress: Progress,
    at_ms: int,
    instant: list[StoredEvent],
    outcomes: list[Outcome],
) -> None:
    """The instant's survey answers, each at the stage the unit's latest attempt had reached
    after the instant's steps (docs/satisfaction.md): instants come in event-time order, so an
    answer that arrived before its stage's event (within the lateness) still joins it."""
    for outcome in outcomes:
        if outcome.kind is Kind.ENTERED:  # in order: the last is the highest stage reached
            entered = progress.remembered()
            entered.reached, entered.reached_segments = outcome.stage, outcome.segments
    answers = funnel.answers(instant)
    if not answers:
        return
    memory = progress.memory
    reached = memory.reached if memory is not None else -1
    known = memory.reached_segments if memory is not None else None
    segments = known or (None,) * funnel.segment_count
    for survey, score in answers:
        outcomes.append(
            Outcome(Kind.ANSWERED, reached, at_ms, at_ms, segments, survey, float(score))
        )
