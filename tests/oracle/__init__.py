"""The SQL oracle: the numbers of `docs/funnel-semantics.md`, computed by DuckDB from raw events.

Written from the specification, not from the streaming core (nothing of ``streamer.funnel`` is
used but the definition model that loads the YAML; the step timeouts ``Tk`` are derived from
its fields by the spec's rule here, not by the core's ``step_timeout_ms``). Python only
generates SQL text from the funnel definition (stage predicates, the step timeouts as a list
literal) and reshapes the query results; every decision is made by the SQL below:

0. ``user_raw`` (user funnels): each event keyed by its unit (identity rules, in SQL).
1. ``ev``: the events, de-duplicated by (session or unit, event id), with the stage each matches
   (predicates over the JSON properties), the segment values and the cart value.
2. ``inst``: one row per session and instant (event time): which stages occur, the smallest
   segment value among its funnel events, the largest cart value.
3. ``walk``: a recursive CTE that walks each session's instants in time order with the
   spec's state (idle or an attempt: start, stage, reached, deadline, segments, cart value,
   and for unordered funnels the steps done as a bit mask) and records, per instant, the
   drop (by timeout, a strict funnel's break, or a restart under ``reentry: latest``), start
   and advance that happened. With repeated event types, hold or step attribution each event
   is the set of stages it matches (a bit mask), and the advance is a fold over the stages in
   which an event fills a stage only if it fits none filled at the instant.
4. ``outcome``: entries, conversions and drops (plus the drops the watermark decides), then
   grouped into cohort windows, per segment, and abandonments with their retractions.
5. ``conversions`` (``_time_to_convert``): each window's exact mean time to convert and its
   lower median (the ceil(n/2)-th smallest), by window functions over the conversions.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import orjson

from streamer.funnel.definition import Condition, FunnelDefinition

__all__ = ["BUCKET_BOUNDS_MS", "OracleResult", "compute"]

# The spec's time-to-convert buckets (inclusive upper bounds, ms); a last bucket is +Inf.
BUCKET_BOUNDS_MS = (1000, 5000, 15000, 30000, 60000, 120000, 300000, 600000, 1800000,
                    3600000, 7200000, 86400000)  # fmt: skip
NEVER = -(2**62)


@dataclass
class OracleResult:
    windows: dict[tuple[str, int, str], dict[str, Any]] = field(default_factory=dict)
    segments: dict[tuple[str, int, str, str, str], dict[str, int]] = field(default_factory=dict)
    abandonments: dict[str, dict[str, Any]] = field(default_factory=dict)
    final: dict[tuple[str, int, str], bool] = field(default_factory=dict)
    # (funnel, window start, survey, stage or "none", segment or "", value or "", score) -> n
    answers: dict[tuple[str, int, str, str, str, str, int], int] = field(default_factory=dict)


_lock = threading.Lock()
_connection: duckdb.DuckDBPyConnection | None = None


def _db() -> duckdb.DuckDBPyConnection:
    global _connection
    if _connection is None:
        _connection = duckdb.connect(":memory:")
    return _connection


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


def _condition_sql(condition: Condition) -> str:
    """A stage filter as SQL over the JSON properties ``p`` (spec: a missing property matches
    only `ne` with a value; text compared with a number matches nothing)."""
    path = "'$." + condition.property.replace("'", "''") + "'"
    raw = f"json_extract(p, {path})"
    kind = f"json_type({raw})"
    text = f"json_extract_string(p, {path})"
    number = f"TRY_CAST({text} AS DOUBLE)"
    missing = f"({raw} IS NULL OR {kind} = 'NULL')"

    def equal(value: Any) -> str:
        if isinstance(value, bool):
            return f"({kind} = 'BOOLEAN' AND {text} = '{str(value).lower()}')"
        if isinstance(value, int | float):
            return f"({kind} IN ('BIGINT', 'UBIGINT', 'DOUBLE') AND {number} = {value!r})"
        if value is None:
            return "FALSE"
        return f"({kind} = 'VARCHAR' AND {text} = {_literal(str(value))})"

    op, value = condition.op, condition.value
    if op == "eq":
        return f"(NOT {missing} AND {equal(value)})"
    if op == "ne":
        return f"({missing} OR NOT {equal(value)})" if value is not None else f"NOT {missing}"
    if op == "in":
        return (
            "(" + " OR ".join([f"(NOT {missing} AND {equal(v)})" for v in value] or ["FALSE"]) + ")"
        )
    symbol = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}[op]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"({kind} IN ('BIGINT', 'UBIGINT', 'DOUBLE') AND {number} {symbol} {value!r})"
    return f"({kind} = 'VARCHAR' AND {text} {symbol} {_literal(str(value))})"


def _stage_sql(funnel: FunnelDefinition) -> str:
    cases = []
    for index, stage in enumerate(funnel.stages):
        types = ", ".join(_literal(t) for t in stage.event_types)
        conditions = " AND ".join(_condition_sql(c) for c in stage.where) or "TRUE"
        cases.append(f"WHEN event_type IN ({types}) AND {conditions} THEN {index}")
    return "CASE " + " ".join(cases) + " ELSE -1 END"


def _segment_sql(funnel: FunnelDefinition) -> list[str]:
    out = []
    for segment in funnel.segments:
        kind, _, name = segment.source.partition(".")
        name = name.replace("'", "''")
        if segment.source == "event_name":  # spec "Barriers": the listed events' own names
            names = ", ".join(_literal(e) for e in segment.events)
            out.append(f"CASE WHEN event_type IN ({names}) THEN event_type END")
            continue
        if segment.buckets:  # spec "Barriers": a JSON number's bucket, lower edge included
            column = "c" if kind == "context" else "p"
            number = f"json_extract({column}, '$.{name}')"
            labels = segment.bucket_labels
            cases = " ".join(
                f"WHEN CAST({number} AS DOUBLE) < {edge!r} THEN {_literal(label)}"
                for edge, label in zip(segment.buckets, labels, strict=False)
            )
            out.append(
                f"CASE WHEN json_type({number}) NOT IN ('BIGINT', 'UBIGINT', 'DOUBLE') "
                f"OR json_type({number}) IS NULL THEN NULL {cases} ELSE {_literal(labels[-1])} END"
            )
            continue
        if kind == "context":
            raw = f"json_extract_string(c, '$.{name}')"
        elif kind == "property":
            raw = f"json_extract_string(p, '$.{name}')"
        else:
            raw = f"json_extract_string(c, '$.experiments.{name}')"
        value = f"left(NULLIF({raw}, ''), 64)"
        if segment.values:
            allowed = ", ".join(_literal(v) for v in segment.values)
            value = (
                f"CASE WHEN {value} IS NULL THEN NULL "
                f"WHEN {value} IN ({allowed}) THEN {value} ELSE 'other' END"
            )
        out.append(value)
    return out


_CART = """CASE
    WHEN json_type(json_extract(p, '$.cart_value')) IN ('BIGINT','UBIGINT','DOUBLE')
         AND CAST(json_extract(p, '$.cart_value') AS DOUBLE) > 0
        THEN CAST(json_extract(p, '$.cart_value') AS DOUBLE)
    WHEN json_type(json_extract(p, '$.amount')) IN ('BIGINT','UBIGINT','DOUBLE')
         AND CAST(json_extract(p, '$.amount') AS DOUBLE) > 0
        THEN CAST(json_extract(p, '$.amount') AS DOUBLE)
    WHEN json_type(json_extract(p, '$.value')) IN ('BIGINT','UBIGINT','DOUBLE')
         AND CAST(json_extract(p, '$.value') AS DOUBLE) > 0
        THEN CAST(json_extract(p, '$.value') AS DOUBLE)
    ELSE 0 END"""


def _exclusion_sql(funnel: FunnelDefinition) -> list[str]:
    """Per stage k < n: does the event match an exclusion whose ``between: [from, to]`` (the
    first and last stage if absent) has from <= k < to."""
    names = [stage.name for stage in funnel.stages]
    n = len(names) - 1
    per_stage: list[list[str]] = [[] for _ in range(n)]
    for exclusion in funnel.exclusions:
        low, high = exclusion.between or (names[0], names[-1])
        types = ", ".join(_literal(t) for t in exclusion.event_types)
        conditions = " AND ".join(_condition_sql(c) for c in exclusion.where) or "TRUE"
        for k in range(names.index(low), names.index(high)):
            per_stage[k].append(f"(event_type IN ({types}) AND {conditions})")
    return [" OR ".join(found) or "FALSE" for found in per_stage]


def _masked(funnel: FunnelDefinition) -> bool:
    """Whether events are read as the set of stages each matches (spec: "Repeated events and
    re-entry"; also needed by hold and step attribution)."""
    types = [t for stage in funnel.stages for t in stage.event_types]
    steps = any(not isinstance(s.attribution, str) for s in funnel.segments)
    first_time = any(stage.first_time for stage in funnel.stages)
    return len(set(types)) < len(types) or bool(funnel.hold) or steps or first_time


def _first_time_sql(funnel: FunnelDefinition, retention_ms: int) -> str:
    """The CTEs from the matched events ``ev0`` to ``ev`` (spec: "First-time steps"): a
    unit's memory spans its instants up to a gap longer than the retention (an epoch); in
    each epoch a first-time stage keeps only the events of the first instant that matches it
    (by type and filters), and an event's stage is the lowest it still matches."""
    first = [k for k, stage in enumerate(funnel.stages) if stage.first_time]
    if not first:
        return "ev AS (SELECT * FROM ev0)"
    firsts = "".join(
        f", min(t) FILTER (WHERE (m >> {k}) & 1 = 1) OVER (PARTITION BY sid, epoch) AS f{k}"
        for k in first
    )
    later = " | ".join(f"(CASE WHEN t > f{k} THEN {1 << k} ELSE 0 END)" for k in first)
    return f"""gaps AS (
    SELECT sid, t, t - lag(t) OVER (PARTITION BY sid ORDER BY t) > {retention_ms} AS forgets
    FROM (SELECT DISTINCT sid, t FROM ev0)
),
epochs AS (
    SELECT sid, t, sum(CASE WHEN forgets THEN 1 ELSE 0 END) OVER (PARTITION BY sid ORDER BY t)
           AS epoch
    FROM gaps
),
ev_first AS (
    SELECT ev0.*{firsts} FROM ev0 JOIN epochs USING (sid, t)
),
ev_kept AS (
    SELECT * EXCLUDE (m), m & ~({later})::BIGINT AS m FROM ev_first
),
ev AS (
    SELECT * EXCLUDE (stage),
           CASE WHEN m = 0 THEN -1 ELSE bit_count((m & -m) - 1) END::INTEGER AS stage
    FROM ev_kept
)"""


def _mask_sql(funnel: FunnelDefinition) -> str:
    """The stages an event matches, one bit each."""
    bits = []
    for index, stage in enumerate(funnel.stages):
        types = ", ".join(_literal(t) for t in stage.event_types)
        conditions = " AND ".join(_condition_sql(c) for c in stage.where) or "TRUE"
        bits.append(
            f"(CASE WHEN event_type IN ({types}) AND {conditions} THEN {1 << index} ELSE 0 END)"
        )
    return "(" + " + ".join(bits) + ")::BIGINT"


def _held_sql(funnel: FunnelDefinition) -> list[str]:
    """Each held field's value as text (spec: "Holding a property constant"); NULL: missing."""
    out = []
    for name in funnel.hold:
        kind, _, field_name = name.rpartition(".")
        column = "c" if kind == "context" else "p"
        out.append(f"NULLIF(json_extract_string({column}, '$.{field_name}'), '')")
    return out


def _step_stage(funnel: FunnelDefinition, d: int) -> int | None:
    """The 0-based stage a segment is attributed to (``step: N``), or None."""
    attribution = funnel.segments[d].attribution
    return None if isinstance(attribution, str) else attribution.step - 1


def _timeout_ms(funnel: FunnelDefinition, k: int) -> int:
    """``Tk`` as the specification's Terms define it, not the core's ``step_timeout_ms``: the
    stage's own ``timeout``, else the funnel's ``step_timeout`` (default 30m), capped at
    ``CW``; an optional stage's is that of the nearest required stage before it ("Optional
    steps")."""
    required = max(j for j in range(k + 1) if not funnel.stages[j].optional)
    own = funnel.stages[required].timeout_ms
    timeout = funnel.default_step_timeout_ms if own is None else own
    return min(timeout, funnel.conversion_window_ms)


def _walk_sql(
    funnel: FunnelDefinition, watermark_ms: int, source: str = "raw", retention_ms: int = 10**12
) -> str:
    """The per-funnel query: events -> instants -> recursive walk -> outcomes."""
    n = len(funnel.stages) - 1
    dims = range(len(funnel.segments))
    timeouts = "[" + ", ".join(str(_timeout_ms(funnel, k)) for k in range(n)) + ", 0]"
    cw = funnel.conversion_window_ms
    seg_cols = "".join(f", {sql} AS g{d}" for d, sql in enumerate(_segment_sql(funnel)))
    has = "[" + ", ".join(f"bool_or(stage = {k})" for k in range(n + 1)) + "]"
    optional = [stage.optional for stage in funnel.stages]
    masked = _masked(funnel)
    if masked:
        has = "[" + ", ".join(f"bool_or((m >> {k}) & 1 = 1)" for k in range(n + 1)) + "]"
    held = range(len(funnel.hold))
    held_cols = "".join(f", {sql} AS h{x}" for x, sql in enumerate(_held_sql(funnel)))
    step_of = {d: _step_stage(funnel, d) for d in dims}
    # Per instant: each event's stages and held values; the held values of its S0 events; the
    # values of the events of each attributed step.
    evs = "list(struct_pack(m := m" + "".join(f", h{x} := h{x}" for x in held) + "))"
    inst_more = f", {evs} AS evs" if masked else ""
    inst_more += "".join(f", min(h{x}) FILTER (WHERE m & 1 = 1) AS hs{x}" for x in held)
    inst_more += "".join(
        f", min(g{d}) FILTER (WHERE (m >> {j}) & 1 = 1) AS n{d}"
        for d, j in step_of.items()
        if j is not None
    )
    # A user funnel's experiments (docs/experiments.md, "Per unit in user funnels"): the unit
    # keeps the variant of its first exposure that carried one, until a silence longer than
    # the retention (an instant that "forgets").
    experiments = {e.name for e in funnel.experiments}
    fixed = [d for d in dims if funnel.follows == "user" and funnel.segments[d].name in experiments]
    if fixed:
        inst_more += f", t - lag(t) OVER (PARTITION BY sid ORDER BY t) > {retention_ms} AS forgets"
    strict = funnel.order == "strict"
    unordered = funnel.order == "unordered"
    ignored = ", ".join(_literal(t) for t in funnel.strict_ignore)
    # Strict: an instant with an event of a type strict mode does not ignore (any event).
    noise = f"bool_or(event_type NOT IN ({ignored}))" if ignored else "TRUE"
    # Exclusions: x{k} is true for an event that excludes at stage k (spec: "Exclusion steps").
    x_cols = "".join(f", {sql} AS x{k}" for k, sql in enumerate(_exclusion_sql(funnel)))
    exc = "[" + "".join(f"bool_or(x{k}), " for k in range(n)) + "false]"
    # Optional stages: R(k), the next required stage after k (n for the last), and the latest
    # required stage at or before k, as list literals indexed by k + 1.
    skipping = any(optional)
    req_upto = [max(j for j in range(k + 1) if not optional[j]) for k in range(n + 1)]
    # A seen event's name (source event_name) comes from any event of the instant.
    mins = "".join(
        f", min(g{d}) FILTER (WHERE {'TRUE' if seen else 'stage >= 0'}) AS m{d}"
        for d, seen in ((d, funnel.segments[d].source == "event_name") for d in dims)
    )
    # The step's expressions, in the spec's order (names refer to the previous row r and the
    # instant i; each line builds on the ones before by textual substitution).
    drop = "(r.active AND i.t > r.deadline)"
    # Excluded at the stage it is at, when in time (an exclusion wins over a strict break).
    excluding = bool(funnel.exclusions)  # else the terms below are FALSE: a shorter query
    excl1 = f"(r.active AND NOT {drop} AND i.exc[r.k + 1])" if excluding else "FALSE"
    # Strict: broken when in time, no event of the next stage, and some event not ignored.
    next_req = [next(j for j in range(k + 1, n + 1) if not optional[j]) for k in range(n)] + [n]

    def fit(held_values: list[str]) -> str:
        """The instant's event masks as an attempt with these held values sees them: an event
        with other values matches only S0."""
        if not funnel.hold:
            return "list_transform(i.evs, lambda e: e.m)"
        same = " AND ".join(
            f"e.h{x} IS NOT DISTINCT FROM {value}" for x, value in enumerate(held_values)
        )
        return (
            f"list_transform(i.evs, lambda e: CASE WHEN e.m <= 1 OR ({same}) THEN e.m "
            "ELSE e.m & 1 END)"
        )

    prev_fit = fit([f"r.held{x}" for x in held])

    def has_prev(j: str) -> str:
        """An event of the instant matches stage ``j`` for the attempt before it."""
        if not funnel.hold:
            return f"i.has[({j}) + 1]"
        return (
            f"coalesce(list_bool_or(list_transform({prev_fit}, lambda pm: (pm >> ({j})) & 1 = 1"
            ")), false)"
        )

    brk = (
        f"(r.active AND NOT {drop} AND NOT {excl1} AND i.noise AND NOT {has_prev('r.k + 1')})"
        if strict
        else "FALSE"
    )
    # Re-entry latest: an S0 event restarts an attempt that no event of the instant advances.
    can_advance = (
        f"coalesce(list_bool_or(list_transform(range(r.k + 1, {next_req}[r.k + 1] + 1), "
        f"lambda rj: {has_prev('rj')})), false)"
    )
    restart = (
        f"(r.active AND NOT {drop} AND NOT {excl1} AND NOT {brk} AND i.has[1] "
        f"AND NOT {can_advance})"
        if funnel.reentry == "latest"
        else "FALSE"
    )
    dropped = f"({drop} OR {brk} OR {restart})"
    still = f"(r.active AND NOT {dropped} AND NOT {excl1})"
    # A timed-out attempt ends at its deadline, an excluded one now, a broken (or restarted)
    # one at its latest instant.
    ended1 = (
        f"(CASE WHEN {drop} THEN r.deadline WHEN {excl1} THEN i.t WHEN {brk} OR {restart} "
        "THEN r.lastact ELSE r.ended END)"
    )
    begins = "i.mask > 0" if unordered else "i.has[1]"
    start = f"((NOT {still}) AND {begins} AND i.t > {ended1})"
    active2 = f"({still} OR {start})"
    a2 = f"(CASE WHEN {start} THEN i.t ELSE r.a END)"
    k1 = f"(CASE WHEN {start} THEN 0 ELSE r.k END)"
    reached1 = f"(CASE WHEN {start} THEN i.t ELSE r.reached END)"
    held2 = [f"(CASE WHEN {start} THEN i.hs{x} ELSE r.held{x} END)" for x in held]
    # Masked: from stage k1 (filled at t if the attempt started at t), the nearest stage up to
    # R(k) that an event fills which fits no stage filled at t; again and again: a fold whose
    # accumulator is (stages filled at t) << 6 | stage.
    fold = (
        f"list_reduce(range({k1} + 1, {n + 1}), lambda acc, fj: CASE WHEN fj > acc & 63 AND "
        f"fj <= {next_req}[(acc & 63) + 1] AND coalesce(list_bool_or(list_transform("
        f"{fit(held2)}, lambda fm: (fm >> fj) & 1 = 1 AND fm & (acc >> 6) = 0)), false) "
        f"THEN (((acc >> 6) | (1::BIGINT << fj)) << 6) | fj ELSE acc END, "
        f"(((CASE WHEN {start} THEN 1 ELSE 0 END)::BIGINT << 6) | {k1}))"
    )
    filled = f"(CASE WHEN {active2} THEN {fold} >> 6 ELSE 0 END)"
    cart2 = (
        f"(CASE WHEN {start} THEN i.cart WHEN {still} THEN "
        f"(CASE WHEN i.cart > 0 THEN i.cart ELSE r.cart END) ELSE r.cart END)"
    )
    lastact2 = f"(CASE WHEN {active2} THEN i.t ELSE r.lastact END)"
    rest = f"list_slice(i.has, {k1} + 2, {n + 1})"
    run = (
        f"(CASE WHEN {active2} THEN coalesce(list_position({rest}, false) - 1, len({rest})) "
        f"ELSE 0 END)"
    )
    if skipping:
        # The nearest stage up to R(k) that the instant holds, again and again: a fold.
        reached_to = (
            f"list_reduce(range({k1} + 1, {n + 1}), lambda acc, j: CASE WHEN j > acc AND "
            f"j <= {next_req}[acc + 1] AND i.has[j + 1] THEN j ELSE acc END, {k1})"
        )
        run = f"(CASE WHEN {active2} THEN {reached_to} - {k1} ELSE 0 END)"
    if masked:
        run = f"(CASE WHEN {active2} THEN ({fold} & 63) - {k1} ELSE 0 END)"
    # Unordered: the steps done so far (a bit per stage); each new one is one step further,
    # except the first of a new attempt (its entry).
    done1 = f"(CASE WHEN {still} THEN r.done ELSE 0 END)"
    done2 = f"(CASE WHEN {active2} THEN {done1} | i.mask ELSE 0 END)"
    if unordered:
        run = (
            f"(CASE WHEN {active2} THEN bit_count(i.mask & ~{done1}) "
            f"- (CASE WHEN {start} THEN 1 ELSE 0 END) ELSE 0 END)"
        )
    # An exclusion at a stage the attempt is at during this instant (entered now included)
    # stops it there: the first such stage among k1 .. k1 + run.
    hit = f"list_position(list_slice(i.exc, {k1} + 1, {k1} + {run} + 1), true)"
    if skipping:  # only the stages reached: k1 and those of the instant's events
        hit = (
            f"list_position(list_transform(range({k1}, {k1} + {run} + 1), lambda j: "
            f"i.exc[j + 1] AND (j = {k1} OR i.has[j + 1])), true)"
        )
    excl2 = f"({active2} AND {hit} IS NOT NULL)" if excluding else "FALSE"
    if excluding:
        run = f"(CASE WHEN {excl2} THEN {hit} - 1 ELSE {run} END)"
    k2 = f"({k1} + {run})"
    reached2 = f"(CASE WHEN {run} > 0 THEN i.t ELSE {reached1} END)"
    # Segment values (spec: "Breakdown attribution"): first touch, last touch, or the values
    # of the events of the step the dimension is attributed to, set when the attempt fills it.
    cur = {}
    for d in dims:
        attribution = funnel.segments[d].attribution
        if attribution == "first_touch":
            cur[d] = (
                f"(CASE WHEN {start} THEN i.m{d} WHEN {still} THEN coalesce(r.cur{d}, i.m{d}) "
                f"ELSE r.cur{d} END)"
            )
        elif attribution == "last_touch":
            cur[d] = (
                f"(CASE WHEN {start} THEN i.m{d} WHEN {still} THEN coalesce(i.m{d}, r.cur{d}) "
                f"ELSE r.cur{d} END)"
            )
        else:
            exposed = f"i.n{d}"
            if d in fixed:
                exposed = f"coalesce(CASE WHEN i.forgets THEN NULL ELSE r.fix{d} END, i.n{d})"
            cur[d] = (
                f"(CASE WHEN ({filled} >> {step_of[d]}) & 1 = 1 AND {step_of[d]} <= {k2} "
                f"THEN {exposed} WHEN {start} THEN NULL ELSE r.cur{d} END)"
            )
    fix2 = {
        d: (
            f"(CASE WHEN ({filled} >> {step_of[d]}) & 1 = 1 AND {step_of[d]} <= {k2} "
            f"THEN coalesce(CASE WHEN i.forgets THEN NULL ELSE r.fix{d} END, i.n{d}) "
            f"WHEN i.forgets THEN NULL ELSE r.fix{d} END)"
        )
        for d in fixed
    }
    # S0's entry: a dimension attributed to a later step has no value yet.
    entry0 = {d: "NULL" if (step_of[d] or 0) > 0 else cur[d] for d in dims}
    snap1 = {d: f"(CASE WHEN {start} THEN {entry0[d]} ELSE r.snap{d} END)" for d in dims}
    snap2 = {d: f"(CASE WHEN {run} > 0 THEN {cur[d]} ELSE {snap1[d]} END)" for d in dims}
    # The anchor: when the latest required stage was reached (the deadline runs from it).
    anchor1 = f"(CASE WHEN {start} THEN i.t ELSE r.anchor END)"
    anchor2 = f"(CASE WHEN {run} > 0 AND {req_upto}[{k2} + 1] > {k1} THEN i.t ELSE {anchor1} END)"
    since = anchor2 if skipping else reached2
    complete = f"({active2} AND NOT {excl2} AND {k2} = {n})"
    active3 = f"({active2} AND NOT {complete} AND NOT {excl2})"
    ended3 = f"(CASE WHEN {complete} OR {excl2} THEN i.t ELSE {ended1} END)"
    deadline3 = (
        f"(CASE WHEN {active3} THEN least({since} + {timeouts}[{k2} + 1], {a2} + {cw}) "
        "ELSE NULL END)"
    )

    m_col = f", {_mask_sql(funnel)} AS m" if masked else ""
    # The held values of the attempt and, for a drop, of the attempt dropped (its retraction
    # needs them: spec "Abandonments").
    held_base = "".join(f", NULL::VARCHAR AS held{x}, NULL::VARCHAR AS d_held{x}" for x in held)
    held_step = "".join(f", {held2[x]} AS held{x}, r.held{x} AS d_held{x}" for x in held)
    d_held_step = "".join(f", d_held{x}" for x in held)
    d_held_end = "".join(f", held{x}" for x in held)
    if not masked:
        filled = "0::BIGINT"
    state_cols = "".join(f", cur{d}, snap{d}" for d in dims)
    base_cols = "".join(f", NULL::VARCHAR AS cur{d}, NULL::VARCHAR AS snap{d}" for d in dims)
    base_cols += "".join(f", NULL::VARCHAR AS fix{d}" for d in fixed)
    out_cols = "".join(
        f", NULL::VARCHAR AS dsnap{d}, NULL::VARCHAR AS osnap{d}, NULL::VARCHAR AS ocur{d}"
        for d in dims
    )
    step_state = "".join(f", {cur[d]} AS cur{d}, {snap2[d]} AS snap{d}" for d in dims)
    step_state += "".join(f", {fix2[d]} AS fix{d}" for d in fixed)
    step_out = "".join(
        f", r.snap{d} AS dsnap{d}, {snap1[d]} AS osnap{d}, {cur[d]} AS ocur{d}" for d in dims
    )
    out_names = "".join(f", dsnap{d}, osnap{d}, ocur{d}" for d in dims)
    x_names = ", x_flag, x_stage, x_cohort" + "".join(f", xsnap{d}" for d in dims)
    x_none = ", FALSE, NULL, NULL" + ", NULL" * len(dims)
    x_out = (
        f", {excl1} OR {excl2} AS x_flag, CASE WHEN {excl1} THEN r.k ELSE {k2} END AS x_stage, "
        f"CASE WHEN {excl1} THEN r.reached ELSE {reached2} END AS x_cohort"
        + "".join(
            f", CASE WHEN {excl1} THEN r.snap{d} ELSE {snap2[d]} END AS xsnap{d}" for d in dims
        )
    )
    x_base = ", FALSE AS x_flag, NULL::INTEGER AS x_stage, NULL::BIGINT AS x_cohort" + "".join(
        f", NULL::VARCHAR AS xsnap{d}" for d in dims
    )
    return f"""
WITH RECURSIVE
ev0 AS (
    SELECT sid, at_ms AS t, event_type, {_stage_sql(funnel)} AS stage, {_CART} AS cart{seg_cols}
           {x_cols}{m_col}{held_cols}
    FROM (SELECT DISTINCT ON (sid, eid) sid, eid, event_type, at_ms, p, c FROM {source})
    WHERE at_ms < {watermark_ms}
),
{_first_time_sql(funnel, retention_ms)},
inst AS (
    SELECT sid, t, row_number() OVER (PARTITION BY sid ORDER BY t) AS rn,
           {has} AS has, max(cart) AS cart{mins}, {noise} AS noise, {exc} AS exc,
           coalesce(bit_or(1::BIGINT << greatest(stage, 0)) FILTER (WHERE stage >= 0), 0) AS mask
           {inst_more}
    FROM ev GROUP BY sid, t
),
walk AS (
    SELECT sid, 0::BIGINT AS rn, NULL::BIGINT AS t, FALSE AS active, NULL::BIGINT AS a,
           0 AS k, NULL::BIGINT AS reached, NULL::BIGINT AS deadline, {NEVER}::BIGINT AS ended,
           0.0::DOUBLE AS cart, NULL::BIGINT AS lastact, 0::BIGINT AS done,
           NULL::BIGINT AS anchor, NULL::BOOLEAN[] AS o_has{base_cols},
           FALSE AS d_flag, NULL::INTEGER AS d_stage, NULL::BIGINT AS d_at,
           NULL::BIGINT AS d_cohort, NULL::DOUBLE AS d_value, NULL::BIGINT AS d_lastact,
           NULL::BIGINT AS d_a, FALSE AS o_start, NULL::INTEGER AS o_k1, NULL::INTEGER AS o_k2,
           NULL::BIGINT AS o_reached1{out_cols}{x_base}{held_base}, 0::BIGINT AS o_filled
    FROM (SELECT DISTINCT sid FROM inst)
    UNION ALL
    SELECT r.sid, i.rn, i.t, {active3}, {a2}, {k2}, {reached2}, {deadline3}, {ended3},
           {cart2}, {lastact2}, {done2}, {anchor2}, i.has{step_state},
           {dropped}, r.k, CASE WHEN {drop} THEN r.deadline ELSE i.t END, r.reached, r.cart,
           r.lastact, r.a,
           {start}, {k1}, {k2}, {reached1}{step_out}{x_out}{held_step}, {filled}
    FROM walk r JOIN inst i ON i.sid = r.sid AND i.rn = r.rn + 1
),
final_state AS (
    SELECT * FROM walk QUALIFY rn = max(rn) OVER (PARTITION BY sid)
)
SELECT 'step' AS src, sid, t, active, a, k, reached, deadline, cart, lastact,
       d_flag, d_stage, d_at, d_cohort, d_value, d_lastact, d_a, o_start, o_k1, o_k2,
       o_reached1{out_names}{x_names}, o_has{state_cols}, o_filled{d_held_step}
FROM walk WHERE rn > 0
UNION ALL
SELECT 'end' AS src, sid, t, active, a, k, reached, deadline, cart, lastact,
       active AND deadline < {watermark_ms}, k, deadline, reached, cart, lastact, a,
       FALSE, NULL, NULL, NULL{"".join(f", snap{d}, NULL, NULL" for d in dims)}{x_none},
       NULL{state_cols}, 0{d_held_end}
FROM final_state WHERE rn > 0
"""


def _bucket(ms: int) -> int:
    for index, bound in enumerate(BUCKET_BOUNDS_MS):
        if ms <= bound:
            return index
    return len(BUCKET_BOUNDS_MS)


def compute(
    funnels: Sequence[FunnelDefinition],
    events: Iterable[dict[str, Any]],
    watermark_ms: int,
    retention_ms: int = 10**12,
) -> OracleResult:
    """``retention_ms``: a unit's silence after which first-time stages forget what it did
    (the worker's state retention; spec: "First-time steps")."""
    rows = [
        (
            str(e["session_id"]),
            str(e["event_id"]),
            str(e["event_type"]),
            int(e["at_ms"]),
            orjson.dumps(e.get("properties") or {}).decode(),
            orjson.dumps(e.get("context") or {}).decode(),
            e.get("user_id") or None,
        )
        for e in events
    ]
    result = OracleResult()
    with _lock:
        db = _db()
        db.execute(
            "CREATE OR REPLACE TEMP TABLE raw "
            "(sid VARCHAR, eid VARCHAR, event_type VARCHAR, at_ms BIGINT, p JSON, c JSON, "
            "uid VARCHAR)"
        )
        if rows:
            db.executemany("INSERT INTO raw VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        db.execute(_USER_UNITS)
        for funnel in funnels:
            _funnel(db, funnel, watermark_ms, result, retention_ms)
    return result


# A user funnel's events, keyed by their unit instead of their session (spec: "Counting unit",
# identity rules 1 to 3): the event's own user id, else the smallest user id of its session's
# latest instant at or before it that carries one, else the anonymous unit.
_USER_UNITS = """
CREATE OR REPLACE TEMP TABLE user_raw AS
WITH per_instant AS (
    SELECT sid, at_ms, min(uid) AS instant_uid FROM raw GROUP BY sid, at_ms
),
known AS (
    SELECT sid, at_ms, last_value(instant_uid IGNORE NULLS) OVER (
        PARTITION BY sid ORDER BY at_ms ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
    ) AS known_uid
    FROM per_instant
)
SELECT coalesce(r.uid, k.known_uid, 'anon:' || r.sid) AS sid, r.eid, r.event_type, r.at_ms,
       r.p, r.c
FROM raw r JOIN known k ON k.sid = r.sid AND k.at_ms = r.at_ms
"""


def _funnel(
    db: duckdb.DuckDBPyConnection,
    funnel: FunnelDefinition,
    watermark_ms: int,
    result: OracleResult,
    retention_ms: int,
) -> None:
    dims = range(len(funnel.segments))
    source = "user_raw" if funnel.follows == "user" else "raw"
    walk = _walk_sql(funnel, watermark_ms, source, retention_ms)
    db.execute(f"CREATE OR REPLACE TEMP TABLE walked AS {walk}")
    # Outcomes: (kind, stage, cohort reached time, ttc, value, segment values...).
    # The stages an advance went through: all of k1 + 1 .. k2, but optional ones skipped.
    reached = "o_has[j + 1]" if any(stage.optional for stage in funnel.stages) else "TRUE"
    if _masked(funnel) and funnel.order != "unordered":  # unordered: positions, all reached
        reached = "(o_filled >> j) & 1 = 1"
    seg_select = lambda prefix: "".join(f", {prefix}{d} AS s{d}" for d in dims)  # noqa: E731

    def at_stage(d: int, value: str, j: str) -> str:
        """A segment value at stage ``j``'s entry: none before the step it is attributed to."""
        step = _step_stage(funnel, d)
        return value if not step else f"CASE WHEN {j} < {step} THEN NULL ELSE {value} END"

    entered_segs = "".join(f", {at_stage(d, f'ocur{d}', 'j')} AS s{d}" for d in dims)
    converted_segs = "".join(
        f", CASE WHEN j = o_k1 THEN osnap{d} ELSE {at_stage(d, f'ocur{d}', 'j')} END AS s{d}"
        for d in dims
    )
    start_segs = "".join(f", {at_stage(d, f'ocur{d}', '0')} AS s{d}" for d in dims)
    db.execute(f"""
CREATE OR REPLACE TEMP TABLE outcome AS
SELECT 'entered' AS kind, sid, 0 AS stage, t AS cohort, 0::BIGINT AS ttc,
       0.0 AS value{start_segs}
FROM walked WHERE src = 'step' AND o_start
UNION ALL
SELECT 'entered', sid, j, t, 0, 0.0{entered_segs}
FROM (SELECT *, unnest(range(o_k1 + 1, o_k2 + 1)) AS j FROM walked
      WHERE src = 'step' AND o_k2 > o_k1)
WHERE {reached}
UNION ALL
SELECT 'converted', sid, j, CASE WHEN j = o_k1 THEN o_reached1 ELSE t END,
       CASE WHEN j = o_k1 THEN t - o_reached1 ELSE 0 END, 0.0
       {converted_segs}
FROM (SELECT *, unnest(range(o_k1, o_k2)) AS j FROM walked WHERE src = 'step' AND o_k2 > o_k1)
WHERE j = o_k1 OR {reached}
UNION ALL
SELECT 'dropped', sid, d_stage, d_cohort, 0, d_value{seg_select("dsnap")}
FROM walked WHERE d_flag
UNION ALL
SELECT 'excluded', sid, x_stage, x_cohort, 0, 0.0{seg_select("xsnap")}
FROM walked WHERE x_flag
""")
    w = funnel.window_ms
    names = [stage.name for stage in funnel.stages]
    last = len(names) - 1
    stage_rows = db.execute(f"""
SELECT cohort - cohort % {w} AS start, stage,
       count(*) FILTER (WHERE kind = 'entered'),
       count(*) FILTER (WHERE kind = 'converted'),
       count(*) FILTER (WHERE kind = 'dropped'),
       coalesce(sum(ttc) FILTER (WHERE kind = 'converted'), 0),
       coalesce(round(sum(value) FILTER (WHERE kind = 'dropped'), 2), 0),
       list(ttc) FILTER (WHERE kind = 'converted'),
       count(*) FILTER (WHERE kind = 'excluded'),
       count(DISTINCT sid) FILTER (WHERE kind = 'entered')
FROM outcome GROUP BY ALL
""").fetchall()
    for row in stage_rows:
        start, stage, entered, converted, dropped, ttc_sum, value, ttcs, excluded, units = row
        if not entered:
            continue
        buckets = [0] * (len(BUCKET_BOUNDS_MS) + 1)
        for ttc in ttcs or []:
            buckets[_bucket(int(ttc))] += 1
        key = (funnel.name, int(start), names[stage])
        result.windows[key] = {
            "entered": entered,
            "converted": converted,
            "dropped": dropped,
            "excluded": excluded,
            "open": 0 if stage == last else entered - converted - dropped - excluded,
            "ttc_sum_ms": int(ttc_sum),
            "ttc_buckets": buckets,
            "dropped_value": round(float(value), 2),
        }
        if funnel.uniques:  # spec "Uniques and totals": distinct units entering the stage
            result.windows[key]["units"] = units
        # Final: stage k once W >= s + w + Tk; the last stage once W >= s + w.
        lag = _timeout_ms(funnel, stage) if stage < last else 0
        result.final[key] = int(start) + w + lag <= watermark_ms
    _time_to_convert(db, funnel, result)
    for d in dims:
        rows = db.execute(f"""
SELECT cohort - cohort % {w}, stage, coalesce(s{d}, 'unknown'),
       count(*) FILTER (WHERE kind = 'entered'),
       count(*) FILTER (WHERE kind = 'converted'),
       count(*) FILTER (WHERE kind = 'dropped'),
       count(*) FILTER (WHERE kind = 'excluded')
FROM outcome GROUP BY ALL
""").fetchall()
        for start, stage, value, entered, converted, dropped, excluded in rows:
            if not entered:
                continue
            key5 = (funnel.name, int(start), names[stage], funnel.segments[d].name, str(value))
            result.segments[key5] = {
                "entered": entered,
                "converted": converted,
                "dropped": dropped,
                "excluded": excluded,
                "open": 0 if stage == last else entered - converted - dropped - excluded,
            }
    _abandonments(db, funnel, watermark_ms, result, source)
    for index in range(len(funnel.surveys)):
        _answers(db, funnel, index, watermark_ms, result, source)


# docs/satisfaction.md: the scores a survey kind allows (whole numbers).
_SCORES = {"csat": (1, 5), "nps": (0, 10)}


def _answers(
    db: duckdb.DuckDBPyConnection,
    funnel: FunnelDefinition,
    index: int,
    watermark_ms: int,
    result: OracleResult,
    source: str,
) -> None:
    """A survey's answers (a whole-number score in its range), each in the window of its own
    time, at the stage of its unit's latest entry at or before its instant (of one instant's
    entries the highest stage), with that entry's segment values; "none" before any entry."""
    survey = funnel.surveys[index]
    low, high = _SCORES[survey.kind]
    path = "'$." + survey.score.replace("'", "''") + "'"
    dims = range(len(funnel.segments))
    names = [stage.name for stage in funnel.stages]
    w = funnel.window_ms
    segs = "".join(f", e.s{d}" for d in dims)
    inner = "".join(f", s{d}" for d in dims)
    rows = db.execute(f"""
WITH ans AS (
    SELECT sid, at_ms AS t, CAST(json_extract(p, {path}) AS BIGINT) AS score
    FROM (SELECT DISTINCT ON (sid, eid) sid, eid, event_type, at_ms, p FROM {source})
    WHERE at_ms < {watermark_ms} AND event_type = {_literal(survey.event_type)}
      AND json_type(json_extract(p, {path})) IN ('BIGINT', 'UBIGINT')
)
SELECT a.t - a.t % {w}, a.score, e.stage{segs}
FROM ans a LEFT JOIN LATERAL (
    SELECT stage{inner} FROM outcome o
    WHERE o.kind = 'entered' AND o.sid = a.sid AND o.cohort <= a.t
    ORDER BY o.cohort DESC, o.stage DESC LIMIT 1
) e ON TRUE
WHERE a.score BETWEEN {low} AND {high}
""").fetchall()
    for start, score, stage, *values in rows:
        stage_name = "none" if stage is None else names[stage]
        keys = [("", "")] + [
            (funnel.segments[d].name, "unknown" if values[d] is None else str(values[d]))
            for d in dims
        ]
        for dim_name, value in keys:
            key = (funnel.name, int(start), survey.name, stage_name, dim_name, value, int(score))
            result.answers[key] = result.answers.get(key, 0) + 1


def _median_bucket_s(median_ms: int) -> tuple[float, float | None]:
    """The spec's bucket that holds a time to convert, as (above, at most) in seconds: the
    previous bucket's bound (0 for the first) and its own (None for +Inf)."""
    bounds = [0, *BUCKET_BOUNDS_MS]
    index = _bucket(median_ms)
    upper = BUCKET_BOUNDS_MS[index] / 1000 if index < len(BUCKET_BOUNDS_MS) else None
    return bounds[index] / 1000, upper


def _time_to_convert(
    db: duckdb.DuckDBPyConnection, funnel: FunnelDefinition, result: OracleResult
) -> None:
    """Spec "Time to convert": per cohort window and stage, over the converted attempts (zero
    timings included), the exact mean and the ceil(n/2)-th smallest time, in the bucket the
    histogram can name."""
    w = funnel.window_ms
    names = [stage.name for stage in funnel.stages]
    rows = db.execute(f"""
WITH conversions AS (
    SELECT cohort - cohort % {w} AS start, stage, ttc,
           row_number() OVER (PARTITION BY cohort - cohort % {w}, stage ORDER BY ttc) AS nth,
           count(*) OVER (PARTITION BY cohort - cohort % {w}, stage) AS n,
           sum(ttc) OVER (PARTITION BY cohort - cohort % {w}, stage)::DOUBLE
               / count(*) OVER (PARTITION BY cohort - cohort % {w}, stage) AS mean_ms
    FROM outcome WHERE kind = 'converted'
)
SELECT start, stage, mean_ms, ttc FROM conversions WHERE nth = (n + 1) // 2
""").fetchall()
    for start, stage, mean_ms, median_ms in rows:
        numbers = result.windows[(funnel.name, int(start), names[stage])]
        numbers["ttc_mean_s"] = float(mean_ms) / 1000
        numbers["ttc_median_s"] = _median_bucket_s(int(median_ms))
    for numbers in result.windows.values():
        numbers.setdefault("ttc_mean_s", None)
        numbers.setdefault("ttc_median_s", None)


def _abandonments(
    db: duckdb.DuckDBPyConnection,
    funnel: FunnelDefinition,
    watermark_ms: int,
    result: OracleResult,
    source: str,
) -> None:
    stages = [i for i, s in enumerate(funnel.stages) if s.name in funnel.abandonment]
    if not stages:
        return
    dims = range(len(funnel.segments))
    last = len(funnel.stages) - 1
    cw = funnel.conversion_window_ms
    order_types = ", ".join(_literal(t) for t in funnel.stages[last].event_types)
    order_filter = " AND ".join(_condition_sql(c) for c in funnel.stages[last].where) or "TRUE"
    # With hold, only an order with the abandoned attempt's held values retracts it.
    held = range(len(funnel.hold))
    ab_held = "".join(f", d_held{x} AS held{x}" for x in held)
    order_held = "".join(f", {sql} AS h{x}" for x, sql in enumerate(_held_sql(funnel)))
    same_held = "".join(f" AND o.h{x} IS NOT DISTINCT FROM ab.held{x}" for x in held)
    rows = db.execute(f"""
WITH ab AS (
    SELECT sid, d_a AS a, d_at AS d, d_stage AS stage, d_lastact AS lastact, d_value AS value
           {"".join(f", dsnap{d}" for d in dims)}{ab_held}
    FROM walked WHERE d_flag AND d_stage IN ({", ".join(map(str, stages))})
),
orders AS (
    SELECT DISTINCT sid, at_ms AS t{order_held} FROM {source}
    WHERE event_type IN ({order_types}) AND {order_filter} AND at_ms < {watermark_ms}
)
SELECT ab.*,
       (SELECT min(o.t) FROM orders o
        WHERE o.sid = ab.sid AND o.t > ab.d AND o.t <= ab.a + {cw}{same_held}
          AND NOT EXISTS (SELECT 1 FROM ab other WHERE other.sid = ab.sid
                          AND other.d > ab.d AND other.d < o.t)) AS retracted
FROM ab
""").fetchall()
    for row in rows:
        sid, a, d, stage, lastact, value = row[:6]
        snaps = row[6 : 6 + len(dims)]
        retracted = row[-1]
        name = funnel.stages[stage].name
        key = f"{funnel.name}/{sid}/{a}/{name}"
        result.abandonments[key] = {
            "funnel": funnel.name,
            "stage": name,
            "session_id": sid,
            "attempt_ms": int(a),
            "abandoned_ms": int(d),
            "last_activity_ms": int(lastact),
            "cart_value": float(value) if value else None,
            "segments": {funnel.segments[i].name: v for i, v in enumerate(snaps) if v is not None},
            "retracted_ms": int(retracted) if retracted is not None else None,
        }
