"""Every worked example of docs/funnel-semantics.md, through the streaming core and through the
SQL oracle: both must give the numbers the specification states."""

from __future__ import annotations

from typing import Any

import pytest

from streamer.funnel.definition import FunnelDefinition
from tests.oracle import OracleResult, compute
from tests.support.compare import assert_same
from tests.support.core_run import CoreResult, assert_final_consistent, run_core

S = 1000
END = 10**12


def funnel(cart_timeout: str = "10s", **extra: Any) -> FunnelDefinition:
    abandonment = extra.pop("abandonment", ["cart", "pay"])
    return FunnelDefinition.model_validate(
        {
            **extra,
            "name": "f",
            "conversion_window": "60s",
            "window": "10s",
            "stages": [
                {"name": "land", "event_type": "page_view", "timeout": "20s"},
                {"name": "cart", "event_type": "add_to_cart", "timeout": cart_timeout},
                {"name": "pay", "event_type": "payment_submitted", "timeout": "10s"},
                {"name": "order", "event_type": "order_placed"},
            ],
            "segments": {"device": None},
            "abandonment": abandonment,
        }
    )


TYPES = {"land": "page_view", "cart": "add_to_cart", "pay": "payment_submitted",
         "order": "order_placed", "view": "product_view", "fail": "payment_failed"}  # fmt: skip


def events(*spec: tuple[Any, ...]) -> list[dict[str, Any]]:
    """(stage word, seconds[, event id][, {fields}]) -> oracle-shaped events of session s."""
    out = []
    for index, item in enumerate(spec):
        word, seconds = item[0], item[1]
        event_id = next((x for x in item[2:] if isinstance(x, str)), f"e{index}")
        fields = next((x for x in item[2:] if isinstance(x, dict)), {})
        context = {"device": fields.pop("device")} if "device" in fields else {}
        identity = {"session_id": fields.pop("session", "s"), "user_id": fields.pop("user", None)}
        out.append({
            **identity, "event_id": event_id, "event_type": TYPES[word],
            "at_ms": round(seconds * S), "properties": fields, "context": context,
        })  # fmt: skip
    return out


def both(
    evs: list[dict[str, Any]],
    watermark_ms: int = END,
    definition: FunnelDefinition | None = None,
    retention_ms: int = 10**12,
) -> tuple[CoreResult, OracleResult]:
    definition = definition or funnel()
    core = run_core([definition], evs, watermark_ms, retention_ms=retention_ms)
    sql = compute([definition], evs, watermark_ms, retention_ms)
    assert_same("windows", sql.windows, core.windows)
    assert_same("segments", sql.segments, core.segments)
    assert_same("abandonments", sql.abandonments, core.abandonments)
    assert_same("final", sql.final, core.final)
    assert_final_consistent(core)
    # The arrival order of the events never matters.
    reverse = run_core(
        [definition],
        list(reversed(evs)),
        watermark_ms,
        lateness_ms=10**9,
        retention_ms=retention_ms,
    )
    assert (reverse.windows, reverse.abandonments) == (core.windows, core.abandonments)
    return core, sql


def counts(result: CoreResult | OracleResult, start_s: int, stage: str) -> tuple[int, ...]:
    numbers = result.windows[("f", start_s * S, stage)]
    return numbers["entered"], numbers["converted"], numbers["dropped"], numbers["open"]


def test_1_straight_through() -> None:
    core, _ = both(events(("land", 0), ("cart", 5), ("pay", 12), ("order", 20)))
    assert counts(core, 0, "land") == (1, 1, 0, 0)
    assert counts(core, 0, "cart") == (1, 1, 0, 0)
    assert counts(core, 10, "pay") == (1, 1, 0, 0)
    assert counts(core, 20, "order") == (1, 0, 0, 0)
    assert [core.windows[("f", s * S, n)]["ttc_sum_ms"] for s, n in
            ((0, "land"), (0, "cart"), (10, "pay"))] == [5000, 7000, 8000]  # fmt: skip


def test_2_timeout_boundary_is_inclusive() -> None:
    core, _ = both(events(("land", 0), ("cart", 20)))
    assert counts(core, 0, "land") == (1, 1, 0, 0)
    assert core.windows[("f", 0, "land")]["ttc_sum_ms"] == 20_000


def test_3_just_past_the_timeout_drops_at_the_deadline() -> None:
    core, _ = both(events(("land", 0), ("cart", 20.001)))
    assert counts(core, 0, "land") == (1, 0, 1, 0)
    assert ("f", 20 * S, "cart") not in core.windows


@pytest.mark.parametrize(("pay_at", "converts"), [(60, True), (60.001, False)])
def test_4_the_conversion_window_end_is_inclusive(pay_at: float, converts: bool) -> None:
    core, _ = both(events(("land", 0), ("cart", 15), ("pay", pay_at)), definition=funnel("50s"))
    assert counts(core, 10, "cart")[1:3] == ((1, 0) if converts else (0, 1))


@pytest.mark.parametrize("first", ["land", "cart"])
def test_5_same_timestamp_in_any_order(first: str) -> None:
    pair = [("land", 0), ("cart", 0)]
    core, _ = both(events(*(pair if first == "land" else pair[::-1])))
    assert counts(core, 0, "land") == (1, 1, 0, 0)
    assert core.windows[("f", 0, "land")]["ttc_sum_ms"] == 0


def test_6_a_repeated_first_stage_event_is_only_activity() -> None:
    core, _ = both(events(("land", 0), ("land", 3), ("cart", 5)))
    assert counts(core, 0, "land") == (1, 1, 0, 0)
    assert core.windows[("f", 0, "land")]["ttc_sum_ms"] == 5000


def test_7_re_entry_after_completing() -> None:
    core, _ = both(events(("land", 0), ("cart", 1), ("pay", 2), ("order", 3), ("land", 3),
                          ("land", 4)))  # fmt: skip
    # Attempt 2 starts at 4 (not at 3, the end of attempt 1) and drops at 24.
    assert counts(core, 0, "land") == (2, 1, 1, 0)
    assert counts(core, 0, "order") == (1, 0, 0, 0)


def test_8_re_entry_after_dropping() -> None:
    core, _ = both(events(("land", 0), ("land", 25), ("cart", 26)))
    assert counts(core, 0, "land") == (1, 0, 1, 0)
    assert counts(core, 20, "land") == (1, 1, 0, 0)
    assert counts(core, 20, "cart") == (1, 0, 1, 0)
    [abandonment] = core.abandonments.values()
    assert (abandonment["stage"], abandonment["abandoned_ms"]) == ("cart", 36 * S)
    opened, _ = both(events(("land", 0), ("land", 25), ("cart", 26)), watermark_ms=36 * S)
    assert counts(opened, 20, "cart") == (1, 0, 0, 1)


def test_9_duplicates_count_once() -> None:
    core, _ = both(events(("land", 0, "a"), ("cart", 5, "b"), ("cart", 5, "b")))
    assert counts(core, 0, "cart") == (1, 0, 1, 0)
    assert core.duplicates == ["b"]


def test_10_events_after_the_session_was_decided_change_nothing() -> None:
    core, _ = both(events(("land", 0), ("cart", 2), ("pay", 4), ("order", 6), ("pay", 8)))
    assert counts(core, 0, "pay") == (1, 1, 0, 0)
    assert counts(core, 0, "order") == (1, 0, 0, 0)


def test_11_a_purchase_without_a_cart_event_does_not_convert() -> None:
    core, _ = both(events(("land", 0), ("order", 5)))
    assert counts(core, 0, "land") == (1, 0, 1, 0)
    assert ("f", 0, "order") not in core.windows


def test_12_open_until_the_watermark_is_past_the_deadline() -> None:
    still, _ = both(events(("land", 0), ("cart", 5)), watermark_ms=14 * S)
    assert counts(still, 0, "cart") == (1, 0, 0, 1)
    assert not still.final[("f", 0, "cart")]
    decided, _ = both(events(("land", 0), ("cart", 5)), watermark_ms=15 * S + 1)
    assert counts(decided, 0, "cart") == (1, 0, 1, 0)


def test_final_is_per_stage_by_its_own_timeout() -> None:
    """Final: stage k's window once W >= s + w + Tk, the record once all its stages are. With
    T(land) = 20s and T(cart) = 10s, window 0 (w = 10s) is final for cart at 20 s, for land
    only at 30 s; the order stage at 10 s."""
    evs = events(("land", 0), ("cart", 5), ("pay", 6), ("order", 7))
    at_20, _ = both(evs, watermark_ms=20 * S)
    assert at_20.final == {("f", 0, "land"): False, ("f", 0, "cart"): True,
                           ("f", 0, "pay"): True, ("f", 0, "order"): True}  # fmt: skip
    assert at_20.window_final == {("f", 0): False}
    at_30, _ = both(evs, watermark_ms=30 * S)
    assert all(at_30.final.values())
    assert at_30.window_final == {("f", 0): True}
    # Tk is capped at CW: with T(cart) = 90s, cart's window 0 is final at 10 + 60 = 70 s.
    capped, _ = both(events(("land", 0), ("cart", 5)), 70 * S, funnel(cart_timeout="90s"))
    assert capped.final[("f", 0, "cart")]
    assert counts(capped, 0, "cart") == (1, 0, 1, 0)  # dropped at min(5 + 90, 0 + 60)


def test_13_segments_are_first_touch_with_ties_by_text() -> None:
    core, _ = both(events(("land", 0), ("land", 2, {"device": "ios"}),
                          ("cart", 4, {"device": "android"})))  # fmt: skip
    assert core.segments[("f", 0, "land", "device", "unknown")]["entered"] == 1
    assert core.segments[("f", 0, "cart", "device", "ios")]["entered"] == 1
    tied, _ = both(events(("land", 0, {"device": "web"}), ("cart", 0, {"device": "ios"})))
    assert tied.segments[("f", 0, "land", "device", "ios")]["entered"] == 1
    assert tied.segments[("f", 0, "cart", "device", "ios")]["entered"] == 1


def test_14_an_order_after_an_abandonment_retracts_it() -> None:
    core, _ = both(events(("land", 0), ("cart", 2, {"cart_value": 30}), ("order", 40)))
    [abandonment] = core.abandonments.values()
    assert abandonment["stage"] == "cart"
    assert abandonment["abandoned_ms"] == 12 * S
    assert abandonment["cart_value"] == 30.0
    assert abandonment["last_activity_ms"] == 2 * S
    assert abandonment["retracted_ms"] == 40 * S


# --- Order modes (examples 15 to 21) ------------------------------------------------------


def strict(ignore: tuple[str, ...] = ()) -> FunnelDefinition:
    """``Fs``: ``F`` with ``order: strict`` (and ``strict_ignore``)."""
    return funnel(order="strict", strict_ignore=ignore)


def unordered(step_timeout: str = "20s", **extra: Any) -> FunnelDefinition:
    """``Fu``: ``F``'s stages in any order, one step timeout, no abandonment."""
    return FunnelDefinition.model_validate(
        {
            "name": "f",
            "order": "unordered",
            "conversion_window": "60s",
            "window": "10s",
            "step_timeout": step_timeout,
            "stages": [
                {"name": name, "event_type": TYPES[name]}
                for name in ("land", "cart", "pay", "order")
            ],
            "segments": {"device": None},
            **extra,
        }
    )


def test_15_strict_an_event_in_between_breaks() -> None:
    core, _ = both(events(("land", 0), ("view", 3), ("cart", 5)), definition=strict())
    assert counts(core, 0, "land") == (1, 0, 1, 0)
    assert ("f", 0, "cart") not in core.windows
    ignored, _ = both(
        events(("land", 0), ("view", 3), ("cart", 5)), definition=strict(("product_view",))
    )
    assert counts(ignored, 0, "land") == (1, 1, 0, 0)
    assert ignored.windows[("f", 0, "land")]["ttc_sum_ms"] == 5000


def test_16_strict_the_same_instant_is_exempt() -> None:
    core, _ = both(events(("land", 0), ("view", 0), ("cart", 5), ("view", 5)), definition=strict())
    assert counts(core, 0, "land") == (1, 1, 0, 0)
    assert counts(core, 0, "cart") == (1, 0, 1, 0)
    [abandonment] = core.abandonments.values()
    assert (abandonment["abandoned_ms"], abandonment["last_activity_ms"]) == (15 * S, 5 * S)


def test_17_strict_a_repeated_first_stage_event_breaks_and_starts_again() -> None:
    core, _ = both(events(("land", 0), ("land", 3), ("cart", 5)), definition=strict())
    assert counts(core, 0, "land") == (2, 1, 1, 0)
    assert core.windows[("f", 0, "land")]["ttc_sum_ms"] == 2000


def test_18_strict_a_break_out_of_an_abandonment_stage() -> None:
    core, _ = both(
        events(("land", 0), ("cart", 2), ("view", 4), ("order", 30)), definition=strict()
    )
    assert counts(core, 0, "cart") == (1, 0, 1, 0)
    [abandonment] = core.abandonments.values()
    assert abandonment["stage"] == "cart"
    assert (abandonment["abandoned_ms"], abandonment["last_activity_ms"]) == (4 * S, 2 * S)
    assert abandonment["retracted_ms"] == 30 * S


def test_19_unordered_any_order_counted_by_position() -> None:
    core, _ = both(
        events(("cart", 0), ("land", 5), ("order", 8), ("pay", 30)), definition=unordered()
    )
    assert counts(core, 0, "land") == (1, 1, 0, 0)  # position 0: one step done
    assert counts(core, 0, "cart") == (1, 1, 0, 0)  # position 1, entered at 5
    assert counts(core, 0, "pay") == (1, 0, 1, 0)  # position 2, entered at 8, dropped at 28
    assert [core.windows[("f", 0, n)]["ttc_sum_ms"] for n in ("land", "cart")] == [5000, 3000]
    assert counts(core, 30, "land") == (1, 0, 1, 0)  # attempt 2 from pay@30


def test_20_unordered_repeats_and_one_instant() -> None:
    core, _ = both(
        events(("cart", 0), ("cart", 2), ("land", 2), ("pay", 2)), definition=unordered()
    )
    assert counts(core, 0, "land") == (1, 1, 0, 0)
    assert counts(core, 0, "cart") == (1, 1, 0, 0)
    assert counts(core, 0, "pay") == (1, 0, 1, 0)
    assert [core.windows[("f", 0, n)]["ttc_sum_ms"] for n in ("land", "cart")] == [2000, 0]


def test_21_unordered_the_window_is_anchored_at_the_first_step() -> None:
    core, _ = both(
        events(("land", 0), ("cart", 25), ("pay", 50), ("order", 61), ("land", 70)),
        definition=unordered("30s"),
    )
    assert counts(core, 0, "land") == (1, 1, 0, 0)
    assert counts(core, 20, "cart") == (1, 1, 0, 0)
    assert counts(core, 50, "pay") == (1, 0, 1, 0)  # 3 steps, dropped at 60
    assert counts(core, 60, "land") == (1, 1, 0, 0)  # attempt 2 from order@61, land@70
    assert counts(core, 70, "cart") == (1, 0, 1, 0)  # dropped at 100
    assert not {("f", 60, "order"), ("f", 70, "order")} & set(core.windows)


def test_18_strict_an_order_that_breaks_retracts_the_earlier_abandonment() -> None:
    core, _ = both(
        events(("land", 0), ("cart", 2), ("view", 4), ("land", 5), ("cart", 6), ("order", 8)),
        definition=strict(),
    )
    by_drop = {a["abandoned_ms"]: a for a in core.abandonments.values()}
    assert sorted(by_drop) == [4 * S, 8 * S]
    assert by_drop[4 * S]["retracted_ms"] == 8 * S
    assert by_drop[8 * S]["retracted_ms"] is None


# --- Exclusion steps (examples 22 to 25) --------------------------------------------------
FAILED_PAYMENT = {"event_type": "payment_failed", "between": ["cart", "order"]}


def excluding(**extra: Any) -> FunnelDefinition:
    """``Fx``: ``F`` with a payment_failed exclusion between cart and order."""
    return funnel(exclusions=[FAILED_PAYMENT], **extra)


def excluded(result: CoreResult | OracleResult, start_s: int, stage: str) -> int:
    return int(result.windows[("f", start_s * S, stage)]["excluded"])


def test_22_excluded_between_two_steps() -> None:
    core, _ = both(
        events(("land", 0), ("cart", 2), ("fail", 5), ("pay", 6)), definition=excluding()
    )
    assert counts(core, 0, "cart") == (1, 0, 0, 0)
    assert excluded(core, 0, "cart") == 1
    assert counts(core, 0, "land") == (1, 1, 0, 0)
    assert ("f", 0, "pay") not in core.windows
    assert core.abandonments == {}


def test_23_an_exclusion_wins_a_same_instant_tie() -> None:
    core, _ = both(
        events(("land", 0), ("cart", 2), ("pay", 5), ("fail", 5)), definition=excluding()
    )
    assert excluded(core, 0, "cart") == 1
    assert ("f", 0, "pay") not in core.windows
    reached, _ = both(events(("land", 0), ("cart", 2), ("fail", 2)), definition=excluding())
    assert counts(reached, 0, "cart") == (1, 0, 0, 0)
    assert excluded(reached, 0, "cart") == 1
    before, _ = both(events(("land", 0), ("fail", 0)), definition=excluding())
    assert counts(before, 0, "land") == (1, 0, 1, 0)
    assert excluded(before, 0, "land") == 0


def test_24_outside_the_range_or_too_late() -> None:
    core, _ = both(events(("land", 0), ("fail", 1), ("cart", 3)), definition=excluding())
    assert counts(core, 0, "land") == (1, 1, 0, 0)
    late, _ = both(events(("land", 0), ("cart", 2), ("fail", 12.001)), definition=excluding())
    assert counts(late, 0, "cart") == (1, 0, 1, 0)
    assert excluded(late, 0, "cart") == 0
    [abandonment] = late.abandonments.values()
    assert abandonment["abandoned_ms"] == 12 * S


def test_25_exclusions_in_strict_and_unordered_funnels() -> None:
    strict_core, _ = both(
        events(("land", 0), ("cart", 2), ("fail", 5)), definition=excluding(order="strict")
    )
    assert counts(strict_core, 0, "cart") == (1, 0, 0, 0)
    assert excluded(strict_core, 0, "cart") == 1
    assert strict_core.abandonments == {}
    any_order, _ = both(
        events(("cart", 0), ("land", 3), ("fail", 4)),
        definition=unordered(exclusions=[{"event_type": "payment_failed"}]),
    )
    assert counts(any_order, 0, "land") == (1, 1, 0, 0)
    assert counts(any_order, 0, "cart") == (1, 0, 0, 0)  # position 1
    assert excluded(any_order, 0, "cart") == 1


# --- Optional steps (examples 26 to 29) ---------------------------------------------------


def optional_cart() -> FunnelDefinition:
    """``Fo``: ``F`` with ``cart`` optional and no timeout of its own."""
    stages = [
        {"name": "land", "event_type": "page_view", "timeout": "20s"},
        {"name": "cart", "event_type": "add_to_cart", "optional": True},
        {"name": "pay", "event_type": "payment_submitted", "timeout": "10s"},
        {"name": "order", "event_type": "order_placed"},
    ]
    fields = {"name": "f", "conversion_window": "60s", "window": "10s", "stages": stages,
              "segments": {"device": None}, "abandonment": ["cart", "pay"]}  # fmt: skip
    return FunnelDefinition.model_validate(fields)


def ttc(result: CoreResult | OracleResult, start_s: int, stage: str) -> int:
    return int(result.windows[("f", start_s * S, stage)]["ttc_sum_ms"])


def test_26_an_optional_step_skipped() -> None:
    core, _ = both(events(("land", 0), ("pay", 5), ("order", 8)), definition=optional_cart())
    assert counts(core, 0, "land") == (1, 1, 0, 0)
    assert ttc(core, 0, "land") == 5000
    assert ("f", 0, "cart") not in core.windows
    assert counts(core, 0, "pay") == (1, 1, 0, 0)


def test_27_an_optional_step_taken_keeps_the_required_stage_s_deadline() -> None:
    core, _ = both(events(("land", 0), ("cart", 3), ("pay", 15)), definition=optional_cart())
    assert counts(core, 0, "land") == (1, 1, 0, 0)
    assert ttc(core, 0, "land") == 3000
    assert counts(core, 0, "cart") == (1, 1, 0, 0)
    assert ttc(core, 0, "cart") == 12_000


def test_28_the_drop_is_decided_by_the_next_required_step() -> None:
    core, _ = both(events(("land", 0), ("cart", 3), ("pay", 21)), definition=optional_cart())
    assert counts(core, 0, "cart") == (1, 0, 1, 0)
    assert ("f", 20 * S, "pay") not in core.windows
    [abandonment] = core.abandonments.values()
    assert (abandonment["stage"], abandonment["abandoned_ms"]) == ("cart", 20 * S)
    assert abandonment["last_activity_ms"] == 3 * S


def test_29_optional_and_required_stages_at_one_instant() -> None:
    core, _ = both(
        events(("land", 0), ("cart", 4), ("pay", 4), ("order", 4)), definition=optional_cart()
    )
    assert counts(core, 0, "cart") == (1, 1, 0, 0)
    assert [ttc(core, 0, n) for n in ("land", "cart", "pay")] == [4000, 0, 0]
    assert counts(core, 0, "order") == (1, 0, 0, 0)


# --- Counting unit: user funnels (examples 30 to 32) --------------------------------------


def by_user() -> FunnelDefinition:
    """``Fp``: ``F`` with ``follows: user``."""
    return funnel(follows="user")


def test_30_one_user_on_two_devices() -> None:
    core, _ = both(
        events(
            ("land", 0, {"session": "A", "user": "u"}), ("cart", 5, {"session": "B", "user": "u"})
        ),
        definition=by_user(),
    )
    assert counts(core, 0, "land") == (1, 1, 0, 0)
    assert ttc(core, 0, "land") == 5000


def test_31_before_and_after_login() -> None:
    core, _ = both(
        events(("land", 0), ("land", 2, {"user": "u"}), ("cart", 4)), definition=by_user()
    )
    assert counts(core, 0, "land") == (2, 1, 1, 0)  # anon:s dropped, u converted
    assert ttc(core, 0, "land") == 2000
    [abandonment] = core.abandonments.values()
    assert abandonment["session_id"] == "u"  # the unit: cart drops at 14


def test_32_two_users_on_one_session() -> None:
    core, _ = both(
        events(("land", 0, {"user": "u"}), ("land", 1, {"user": "v"}), ("cart", 2)),
        definition=by_user(),
    )
    assert counts(core, 0, "land") == (2, 1, 1, 0)
    assert ttc(core, 0, "land") == 1000
    assert {a["session_id"] for a in core.abandonments.values()} == {"v"}


def test_a_user_funnel_s_steps_may_take_the_whole_window_by_default() -> None:
    days = FunnelDefinition.model_validate(
        {"name": "f", "follows": "user", "conversion_window": "14d", "window": "1h",
         "stages": [{"name": "land", "event_type": "page_view"},
                    {"name": "order", "event_type": "order_placed"}]}
    )  # fmt: skip
    core, _ = both(events(("land", 0), ("order", 10 * 86_400)), definition=days)
    assert core.windows[("f", 0, "land")]["converted"] == 1


# --- Time to convert: mean and median (examples 33 to 35) -----------------------------------
def summary(result: CoreResult | OracleResult, start_s: int, stage: str) -> tuple[Any, Any]:
    numbers = result.windows[("f", start_s * S, stage)]
    return numbers["ttc_mean_s"], numbers["ttc_median_s"]


def in_time_order(*sessions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted((e for evs in sessions for e in evs), key=lambda e: int(e["at_ms"]))


def test_33_zero_timings_are_kept_in_the_mean_and_the_median() -> None:
    core, sql = both(in_time_order(
        events(("land", 0, {"session": "a"}), ("cart", 0, {"session": "a"})),
        events(("land", 1, "b1", {"session": "b"}), ("cart", 4, "b2", {"session": "b"})),
        events(("land", 2, "c1", {"session": "c"}), ("cart", 9, "c2", {"session": "c"})),
    ))  # fmt: skip
    for result in (core, sql):
        mean, median = summary(result, 0, "land")
        assert (round(mean, 3), median) == (3.333, (1.0, 5.0))
        assert result.windows[("f", 0, "land")]["ttc_buckets"][0] == 1  # the zero


def test_34_an_even_count_takes_the_lower_median() -> None:
    core, sql = both(in_time_order(
        events(("land", 0, {"session": "a"}), ("cart", 0.5, {"session": "a"})),
        events(("land", 1, "b1", {"session": "b"}), ("cart", 21, "b2", {"session": "b"})),
    ))  # fmt: skip
    for result in (core, sql):
        assert summary(result, 0, "land") == (10.25, (0.0, 1.0))


def test_35_several_stages_at_one_instant_convert_in_zero() -> None:
    core, sql = both(events(("land", 0), ("cart", 4), ("pay", 4), ("order", 4)))
    for result in (core, sql):
        assert summary(result, 0, "cart") == (0.0, (0.0, 1.0))
        assert summary(result, 0, "pay") == (0.0, (0.0, 1.0))
        assert summary(result, 0, "land") == (4.0, (1.0, 5.0))
        assert summary(result, 0, "order") == (None, None)  # no step: no time to convert


# --- Repeated events, re-entry, hold, attribution (examples 36 to 43) ----------------------
def repeated(**extra: Any) -> FunnelDefinition:
    """``Fr``: F with a second add_to_cart stage, ``more``, between cart and pay."""
    return FunnelDefinition.model_validate(
        {"name": "f", "conversion_window": "60s", "window": "10s",
         "stages": [{"name": "land", "event_type": "page_view", "timeout": "20s"},
                    {"name": "cart", "event_type": "add_to_cart", "timeout": "10s"},
                    {"name": "more", "event_type": "add_to_cart", "timeout": "10s"},
                    {"name": "pay", "event_type": "payment_submitted", "timeout": "10s"},
                    {"name": "order", "event_type": "order_placed"}],
         "segments": {"device": None}, "abandonment": ["cart", "pay"], **extra}
    )  # fmt: skip


def test_36_the_same_event_type_in_two_stages() -> None:
    core, _ = both(events(("land", 0), ("cart", 2), ("cart", 5), ("pay", 9)), definition=repeated())
    assert counts(core, 0, "cart") == (1, 1, 0, 0)
    assert counts(core, 0, "more") == (1, 1, 0, 0)
    assert (ttc(core, 0, "cart"), ttc(core, 0, "more")) == (3000, 4000)


def test_37_one_event_fills_one_step_the_next_needs_a_later_instant() -> None:
    core, _ = both(
        events(("land", 0), ("cart", 2, "a"), ("cart", 2, "b"), ("pay", 9)), definition=repeated()
    )
    assert counts(core, 0, "cart") == (1, 0, 1, 0)
    assert not any(key[2] == "more" for key in core.windows)
    [abandonment] = core.abandonments.values()
    assert (abandonment["stage"], abandonment["abandoned_ms"]) == ("cart", 12 * S)


def test_38_re_entry_latest_restarts_unless_the_instant_advances() -> None:
    spec = [("land", 0), ("cart", 2), ("land", 5), ("cart", 7), ("pay", 9)]
    latest, _ = both(events(*spec), definition=funnel(reentry="latest"))
    assert counts(latest, 0, "land") == (2, 2, 0, 0)
    assert counts(latest, 0, "cart") == (2, 1, 1, 0)
    assert ttc(latest, 0, "cart") == 2000
    first_abandonment = min(latest.abandonments.values(), key=lambda a: a["abandoned_ms"])
    assert (first_abandonment["stage"], first_abandonment["abandoned_ms"]) == ("cart", 5 * S)
    assert first_abandonment["last_activity_ms"] == 2 * S
    first, _ = both(events(*spec), definition=funnel(reentry="first"))
    assert counts(first, 0, "cart") == (1, 1, 0, 0)
    assert ttc(first, 0, "cart") == 7000
    advancing, _ = both(
        events(("land", 0), ("land", 2), ("cart", 2)), definition=funnel(reentry="latest")
    )
    assert counts(advancing, 0, "land") == (1, 1, 0, 0)
    assert ttc(advancing, 0, "land") == 2000


def held(**extra: Any) -> FunnelDefinition:
    """``Fh``: F holding the product, no abandonment."""
    return funnel(hold=["product"], abandonment=[], **extra)


def test_39_only_the_held_value_advances() -> None:
    core, _ = both(
        events(("land", 0, {"product": "a"}), ("cart", 3, {"product": "b"}),
               ("cart", 5, {"product": "a"}), ("pay", 9, {"product": "a"})),
        definition=held(),
    )  # fmt: skip
    assert (ttc(core, 0, "land"), ttc(core, 0, "cart")) == (5000, 4000)


def test_40_a_missing_held_value_is_a_value() -> None:
    core, _ = both(
        events(("land", 0), ("cart", 3, {"product": "a"}), ("cart", 4)), definition=held()
    )
    assert counts(core, 0, "land") == (1, 1, 0, 0)
    assert ttc(core, 0, "land") == 4000


def test_41_the_start_instant_decides_the_held_value_and_strict_breaks() -> None:
    core, _ = both(
        events(("land", 0, {"product": "b"}), ("land", 0, {"product": "a"}),
               ("cart", 2, {"product": "b"})),
        definition=held(),
    )  # fmt: skip
    assert counts(core, 0, "land") == (1, 0, 1, 0)
    strict_core, _ = both(
        events(("land", 0, {"product": "a"}), ("cart", 2, {"product": "b"})),
        definition=held(order="strict"),
    )
    assert counts(strict_core, 0, "land") == (1, 0, 1, 0)


def attributed() -> FunnelDefinition:
    """``Fa``: F with three segments on context.device, each attributed its own way."""
    return funnel().model_copy(
        update={
            "segments": FunnelDefinition.model_validate(
                {"name": "f", "conversion_window": "60s",
                 "stages": [{"name": "a", "event_type": "x"}, {"name": "b", "event_type": "y"}],
                 "segments": {
                     "first": {"source": "context.device"},
                     "last": {"source": "context.device", "attribution": "last_touch"},
                     "at_cart": {"source": "context.device", "attribution": {"step": 2}}}}
            ).segments
        }
    )  # fmt: skip


def attribution(result: CoreResult | OracleResult, stage: str) -> tuple[str, ...]:
    """The values stage's entries in window 0 carry, per segment (first, last, at_cart)."""
    return tuple(
        next(key[4] for key, n in result.segments.items()
             if key[2] == stage and key[3] == dim and n["entered"])
        for dim in ("first", "last", "at_cart")
    )  # fmt: skip


def test_42_three_attributions_of_one_attempt() -> None:
    core, _ = both(
        events(("land", 0, {"device": "web"}), ("cart", 2, {"device": "ios"}),
               ("pay", 4, {"device": "android"})),
        definition=attributed(),
    )  # fmt: skip
    assert attribution(core, "land") == ("web", "web", "unknown")
    assert attribution(core, "cart") == ("web", "ios", "ios")
    assert attribution(core, "pay") == ("web", "android", "ios")


def test_43_step_attribution_at_one_instant() -> None:
    core, _ = both(
        events(("land", 0, {"device": "web"}), ("cart", 0, {"device": "ios"})),
        definition=attributed(),
    )
    assert attribution(core, "land") == ("ios", "ios", "unknown")
    assert attribution(core, "cart") == ("ios", "ios", "ios")


# --- First-time steps (examples 44 to 46) ------------------------------------------------
RETENTION_MS = 600 * S  # session_retention_seconds' default: the memory of a session funnel


def first_time() -> FunnelDefinition:
    """``Ff``: F with land and cart first-time stages."""
    base = funnel()
    stages = tuple(
        stage.model_copy(update={"first_time": stage.name in ("land", "cart")})
        for stage in base.stages
    )
    return base.model_copy(update={"stages": stages})


def test_44_only_the_first_landing_starts_an_attempt() -> None:
    spec = [("land", 0), ("land", 30), ("cart", 32)]
    core, _ = both(events(*spec), definition=first_time(), retention_ms=RETENTION_MS)
    assert counts(core, 0, "land") == (1, 0, 1, 0)
    assert not any(key[1] == 30 * S for key in core.windows)
    plain, _ = both(events(*spec), retention_ms=RETENTION_MS)
    assert counts(plain, 30, "land") == (1, 1, 0, 0)
    assert ttc(plain, 30, "land") == 2000


def test_45_used_up_outside_an_attempt_and_one_instant() -> None:
    core, _ = both(
        events(("cart", 0), ("land", 2), ("cart", 5)),
        definition=first_time(),
        retention_ms=RETENTION_MS,
    )
    assert counts(core, 0, "land") == (1, 0, 1, 0)
    one_instant, _ = both(
        events(("land", 0), ("cart", 3, "a"), ("cart", 3, "b"), ("cart", 4)),
        definition=first_time(),
        retention_ms=RETENTION_MS,
    )
    assert counts(one_instant, 0, "land") == (1, 1, 0, 0)
    assert ttc(one_instant, 0, "land") == 3000
    assert counts(one_instant, 0, "cart") == (1, 0, 1, 0)


def test_46_forgotten_after_a_silence_longer_than_the_retention() -> None:
    core, _ = both(
        events(("land", 0), ("land", 300), ("land", 1000), ("cart", 1005)),
        definition=first_time(),
        retention_ms=RETENTION_MS,
    )
    assert counts(core, 0, "land") == (1, 0, 1, 0)
    assert not any(key[1] == 300 * S for key in core.windows)
    assert counts(core, 1000, "land") == (1, 1, 0, 0)
    assert ttc(core, 1000, "land") == 5000


# --- Uniques and totals (examples 47 and 48) ---------------------------------------------
def units(result: CoreResult | OracleResult, start_s: int, stage: str) -> tuple[int, int]:
    numbers = result.windows[("f", start_s * S, stage)]
    return numbers["entered"], numbers["units"]


def test_47_two_attempts_of_one_unit_count_once() -> None:
    core, _ = both(
        events(("land", 0), ("cart", 1), ("pay", 2), ("order", 3), ("land", 4), ("cart", 5)),
        definition=funnel(uniques=True),
    )
    assert units(core, 0, "land") == (2, 1)
    assert units(core, 0, "cart") == (2, 1)
    assert units(core, 0, "pay") == (1, 1)
    assert units(core, 0, "order") == (1, 1)


def test_48_each_stage_counts_its_units_in_its_own_window() -> None:
    core, _ = both(
        events(("land", 3, {"session": "b"}), ("land", 5, {"session": "a"}),
               ("cart", 12, {"session": "a"})),
        definition=funnel(uniques=True),
    )  # fmt: skip
    assert units(core, 0, "land") == (2, 2)
    assert units(core, 10, "cart") == (1, 1)


# --- Hold and abandonments (examples 49 to 51) --------------------------------------------


def held_abandoning() -> FunnelDefinition:
    """``Fha``: F holding the product, with F's abandonments at cart and pay."""
    return funnel(hold=["product"])


def retractions(core: CoreResult) -> dict[int, int | None]:
    """Each abandonment's ``abandoned_at`` (s) -> its ``ordered_at`` (s), or None."""
    return {
        found["abandoned_ms"] // S: (
            None if found["retracted_ms"] is None else found["retracted_ms"] // S
        )
        for found in core.abandonments.values()
    }


def test_49_only_an_order_with_the_held_value_retracts() -> None:
    core, _ = both(
        events(("land", 0, {"product": "a"}), ("cart", 2, {"product": "a"}),
               ("order", 20, {"product": "b"}), ("order", 40, {"product": "a"})),
        definition=held_abandoning(),
    )  # fmt: skip
    [abandonment] = core.abandonments.values()
    assert abandonment["stage"] == "cart"
    assert retractions(core) == {12: 40}


def test_50_a_missing_held_value_retracts_only_with_a_missing_one() -> None:
    start = (("land", 0), ("cart", 2))
    core, _ = both(events(*start, ("order", 30, {"product": "a"})), definition=held_abandoning())
    assert retractions(core) == {12: None}
    missing, _ = both(events(*start, ("order", 30)), definition=held_abandoning())
    assert retractions(missing) == {12: 30}


def test_51_a_later_abandonment_ends_the_earlier_one_s_retraction_whatever_it_holds() -> None:
    core, _ = both(
        events(("land", 0, {"product": "a"}), ("cart", 2, {"product": "a"}),
               ("land", 20, {"product": "b"}), ("cart", 22, {"product": "b"}),
               ("order", 40, {"product": "a"}), ("order", 45, {"product": "b"})),
        definition=held_abandoning(),
    )  # fmt: skip
    assert retractions(core) == {12: None, 32: 45}
