"""The tracking check: is the input itself intact? Pure: window volumes in, outages out.

When an input topic, or one event type, stops arriving while the rest keeps flowing, the missing
events look exactly like customers who stopped converting: a conversion page that sends the
on-call engineer to the payment provider while the bug is in the shop's event producer. The
tracking check tells the two apart before the conversion tests read the gap:

- **Volume.** Every cohort window also counts the accepted events by source (input topic) and
  event type, by event time; a window's volume is complete once the watermark passed its end.
- **Baseline.** Each source's and event type's share of all accepted events, decayed with a
  half-life counted in events (``volume_half_life``): shares, not rates, so the tenfold swing
  between day and night cancels out. Learned from complete windows while nothing is silent.
- **Silence.** A source or event type whose newest complete windows hold *no* event at all,
  while at its share of the rest of the traffic it should have had ``expected`` of them: chance
  alone does that with probability ``exp(-expected)`` (Poisson). Below ``significance`` (shared
  by the keys, Bonferroni) it is an **outage**: a data-quality alert. Zero is the signature of
  broken tracking; a real failure leaves some, and judging that is the conversion tests' job.
  A whole topic does not go silent when a step fails (failures are events too), but one event
  type can nearly: a payment step failing for 95% of customers still records 5% of its orders.
  So an event type's run must be empty even at ``EVENT_TYPE_RESIDUAL`` of its usual volume
  (``exp(-0.05 * expected)`` below the threshold): minutes longer than a topic's.
- **New traffic.** Silence counts only while new sessions keep arriving (at least half their
  usual share): at the end of a burst or a replay, the last sessions' checkout events still
  flow after the clickstream has stopped, and that is not broken tracking.
- **Suspicion.** A run of empty windows that is not significant yet (the same evidence at least
  ``SUSPECT_EVIDENCE``: chance gives it 5% of the time) already holds the conversion tests that
  depend on it, so they cannot fire on a gap that may turn out to be tracking during the
  minutes an outage needs to be sure.
- **Blindness.** From one window before the first empty one (the silence began somewhere in
  it) to the window where events came back, the key is *blind*: a cohort of a step whose next
  stage those events lead to, with conversions due in that span, is neither tested nor learned
  from (:meth:`TrackingCheck.blinds`).

A silent topic is reported as the topic, not as each of its event types; an event type is
reported alone when its topic still flows. Alert ids are ``funnel/tracking/<key>/<watermark>``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from streamer.funnel.windows import NEW_SESSIONS, WindowCounts

__all__ = [
    "EVENT_TYPE_RESIDUAL",
    "SUSPECT_EVIDENCE",
    "TrackingCheck",
    "TrackingDecision",
    "key_name",
]

# A key is "topic:<source>" or "event_type:<type>".
Key = str
# A run of empty windows holds dependent tests once its evidence (events expected in it, at
# the residual share for an event type) reaches this: chance gives it exp(-3) = 5% of the time.
SUSPECT_EVIDENCE = 3.0
# The share of an event type's usual volume a real conversion failure may leave (a step failing
# for 95%): an event type is silent only when not even that much of it came.
EVENT_TYPE_RESIDUAL = 0.05
_NEVER = -(2**62)


def key_name(key: Key) -> tuple[Literal["topic", "event_type"], str]:
    kind, _, name = key.partition(":")
    return ("topic" if kind == "topic" else "event_type"), name


@dataclass(frozen=True)
class TrackingDecision:
    state: Literal["firing", "resolved"]
    alert_id: str
    subject: Literal["topic", "event_type"]
    name: str  # the topic or the event type
    silent_since_ms: int  # start of the first window without any of its events
    evaluated_at_ms: int  # the watermark of the evaluation
    expected_events: float  # how many were expected over the silent windows
    event_types: tuple[str, ...]  # the event types it carries (the topic's, or itself)


@dataclass
class _Run:
    """A trailing run of complete windows without any event of one key."""

    first_ms: int
    expected: float = 0.0
    alert_id: str | None = None  # an outage declared on it
    reported: bool = False  # its firing was sent (not covered by its silent topic)
    suspect: bool = False  # it held dependent tests (so its span stays blind once it ends)
    new_seen: int = 0  # sessions seen for the first time during the run
    new_expected: float = 0.0  # ... and how many the rest of the traffic usually brings

    @property
    def new_traffic(self) -> bool:
        """New sessions keep coming: not the tail of a finished burst."""
        return self.new_seen >= 0.5 * self.new_expected


class TrackingCheck:
    def __init__(
        self,
        funnel_name: str,
        window_ms: int,
        horizon_ms: int,
        *,
        significance: float,
        min_baseline_events: int,
        half_life: float,
    ) -> None:
        self._funnel = funnel_name
        self._window_ms = window_ms
        self._horizon_ms = horizon_ms  # how long a closed outage's span can still matter
        self._significance = significance
        self._min_baseline = min_baseline_events
        self._half_life = half_life
        self.learned: dict[tuple[str, str], float] = {}  # (source, event type) -> decayed n
        self.learned_total = 0.0
        self.learned_new = 0.0  # decayed sessions seen for the first time
        self.tracked_until_ms = _NEVER  # end of the newest complete window consumed
        self.runs: dict[Key, _Run] = {}
        self.closed: list[tuple[Key, int, int]] = []  # (key, blind from, blind until)

    # --- what the conversion tests ask ----------------------------------------------------
    def blinds(self, event_types: Iterable[str], start_ms: int, end_ms: int) -> bool:
        """Whether events of ``event_types`` may be missing from [start_ms, end_ms) because
        their tracking is (or was, or may be) broken: an outage's or a suspect run's span."""
        keys = self._keys_of(event_types)
        for key, run in self.runs.items():
            if key in keys and run.suspect and self._blind_from(run) < end_ms:
                return True
        return any(
            key in keys and begin < end_ms and start_ms < until for key, begin, until in self.closed
        )

    @property
    def warming_up(self) -> bool:
        return self.learned_total < self._min_baseline

    def _keys_of(self, event_types: Iterable[str]) -> set[Key]:
        types = set(event_types)
        keys = {f"event_type:{t}" for t in types}
        keys.update(f"topic:{source}" for source, t in self.learned if t in types and source)
        return keys

    def _blind_from(self, run: _Run) -> int:
        return run.first_ms - self._window_ms  # the silence began within the window before

    # --- evaluation ----------------------------------------------------------------------------
    def evaluate(
        self, watermark_ms: int, windows: Mapping[int, WindowCounts]
    ) -> list[TrackingDecision]:
        """Consume the windows completed since the last call (their end at or behind
        ``watermark_ms``); declare and end outages."""
        size = self._window_ms
        if self.tracked_until_ms == _NEVER:
            if not windows:
                return []
            self.tracked_until_ms = min(windows)
        decisions: list[TrackingDecision] = []
        start = self.tracked_until_ms
        while start + size <= watermark_ms:
            counts = windows.get(start)
            decisions.extend(self._window(start, counts.volume if counts else {}, watermark_ms))
            start += size
        self.tracked_until_ms = start
        decisions.extend(self._declare(watermark_ms))
        self.closed = [c for c in self.closed if c[2] + self._horizon_ms > watermark_ms]
        return decisions

    def _shares(self) -> dict[Key, float]:
        totals: dict[Key, float] = {}
        # In key order, not the dict's: a restored check (loaded sorted) must add the same
        # floats in the same order as the one that never stopped, to the last bit.
        for (source, event_type), n in sorted(self.learned.items()):
            if source:
                totals[f"topic:{source}"] = totals.get(f"topic:{source}", 0.0) + n
            totals[f"event_type:{event_type}"] = totals.get(f"event_type:{event_type}", 0.0) + n
        total = self.learned_total or 1.0
        return {key: n / total for key, n in totals.items()}

    def _window(
        self, start: int, counted: Mapping[tuple[str, str], int], watermark_ms: int
    ) -> list[TrackingDecision]:
        new = counted.get(NEW_SESSIONS, 0)
        volume = {pair: n for pair, n in counted.items() if pair != NEW_SESSIONS}
        new_share = self.learned_new / self.learned_total if self.learned_total else 0.0
        observed: dict[Key, int] = {}
        for (source, event_type), n in volume.items():
            if source:
                observed[f"topic:{source}"] = observed.get(f"topic:{source}", 0) + n
            observed[f"event_type:{event_type}"] = observed.get(f"event_type:{event_type}", 0) + n
        total = sum(volume.values())
        decisions = []
        for key, share in self._shares().items():
            seen = observed.get(key, 0)
            if seen:
                run = self.runs.pop(key, None)
                if run is not None and run.suspect:
                    self.closed.append((key, self._blind_from(run), start + self._window_ms))
                    if run.reported:
                        decisions.append(self._decision("resolved", key, run, watermark_ms))
                continue
            if share >= 0.999 or total == 0:
                continue  # nothing else flows to compare with: not this check's question
            run = self.runs.setdefault(key, _Run(start))
            run.expected += share / (1.0 - share) * total
            run.new_seen += new
            run.new_expected += new_share * total
            if not self.warming_up and _evidence(key, run) >= SUSPECT_EVIDENCE and run.new_traffic:
                run.suspect = True
        holding = any(r.suspect for r in self.runs.values())
        if not holding and total:  # an incident's windows are not what normal looks like
            keep = 0.5 ** (total / self._half_life)
            for pair in self.learned:
                self.learned[pair] *= keep
            for pair, n in volume.items():
                self.learned[pair] = self.learned.get(pair, 0.0) + n
            self.learned_total = self.learned_total * keep + total
            self.learned_new = self.learned_new * keep + new
            if len(self.learned) > 1024:  # types long gone: forget the rarest
                for pair in sorted(self.learned, key=lambda p: (self.learned[p], p))[:512]:
                    del self.learned[pair]
        return decisions

    def _declare(self, watermark_ms: int) -> list[TrackingDecision]:
        if self.warming_up:
            return []
        threshold = self._significance / max(1, len(self._shares()))
        silent_topics = set()
        fresh = []
        for key, run in sorted(self.runs.items()):
            if (
                run.alert_id is None
                and run.new_traffic
                and math.exp(-_evidence(key, run)) < threshold
            ):
                run.alert_id = f"{self._funnel}/tracking/{key}/{watermark_ms}"
                fresh.append(key)
            if run.alert_id is not None and key.startswith("topic:"):
                silent_topics.add(key.removeprefix("topic:"))
        decisions = []
        for key in fresh:
            run = self.runs[key]
            types = self._types_of(key)
            if key.startswith("event_type:") and self._sources_of(types[0]) <= silent_topics:
                continue  # its topic is silent: the topic's alert says it
            run.reported = True
            decisions.append(self._decision("firing", key, run, watermark_ms))
        return decisions

    def _decision(
        self, state: Literal["firing", "resolved"], key: Key, run: _Run, watermark_ms: int
    ) -> TrackingDecision:
        assert run.alert_id is not None
        subject, name = key_name(key)
        return TrackingDecision(
            state=state,
            alert_id=run.alert_id,
            subject=subject,
            name=name,
            silent_since_ms=run.first_ms,
            evaluated_at_ms=watermark_ms,
            expected_events=run.expected,
            event_types=self._types_of(key),
        )

    def _types_of(self, key: Key) -> tuple[str, ...]:
        subject, name = key_name(key)
        if subject == "event_type":
            return (name,)
        return tuple(sorted({t for source, t in self.learned if source == name}))

    def _sources_of(self, event_type: str) -> set[str]:
        return {source for source, t in self.learned if t == event_type and source}

    # --- persistence -------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "learned": [[s, t, n] for (s, t), n in sorted(self.learned.items())],
            "learned_total": self.learned_total,
            "learned_new": self.learned_new,
            "tracked_until_ms": self.tracked_until_ms,
            "runs": [
                [
                    k,
                    r.first_ms,
                    r.expected,
                    r.alert_id,
                    r.reported,
                    r.suspect,
                    r.new_seen,
                    r.new_expected,
                ]
                for k, r in sorted(self.runs.items())
            ],
            "closed": [list(c) for c in self.closed],
        }

    def load_json(self, raw: Mapping[str, Any]) -> None:
        self.learned = {(str(s), str(t)): float(n) for s, t, n in raw["learned"]}
        self.learned_total = float(raw["learned_total"])
        self.learned_new = float(raw.get("learned_new", 0.0))
        self.tracked_until_ms = int(raw["tracked_until_ms"])
        self.runs = {
            str(k): _Run(int(f), float(e), a, bool(r), bool(s), int(n), float(x))
            for k, f, e, a, r, s, n, x in raw["runs"]
        }
        self.closed = [(str(k), int(b), int(u)) for k, b, u in raw["closed"]]


def _evidence(key: Key, run: _Run) -> float:
    """How many events the run should have seen even if a real failure (not tracking) had
    thinned them: all of a topic's; ``EVENT_TYPE_RESIDUAL`` of an event type's."""
    return run.expected * (1.0 if key.startswith("topic:") else EVENT_TYPE_RESIDUAL)
