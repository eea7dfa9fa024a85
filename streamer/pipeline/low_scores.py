"""The low-score alert in the windows stage (docs/satisfaction.md): the detector stage hands
every judgement's windows to :class:`streamer.funnel.satisfaction.LowScoreDetector` too, one
window per boundary (the window that boundary closes: answers count by their own time, so it
holds all of them once the watermark passed its end), and this module turns its decisions into
alert records (``kind`` low_score), as :mod:`streamer.pipeline.guardrails` does for
experiments. The detector's state lives in the detector's table under its own key."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import orjson

from streamer.events import Alert
from streamer.formatting import percent, utc_datetime
from streamer.funnel.definition import FunnelDefinition
from streamer.funnel.satisfaction import (
    LowScoreDecision,
    LowScoreDetector,
    SubjectKey,
    scores_by_subject,
)
from streamer.funnel.windows import WindowCounts

__all__ = [
    "judge_low_scores",
    "low_score_alert_record",
    "low_score_decisions",
    "low_scores_key",
]


def low_scores_key(funnel: FunnelDefinition) -> str:
    return f"low-scores:{funnel.name}"


def low_score_decisions(
    funnel: FunnelDefinition,
    table: Mapping[str, bytes],
    watermarks: Sequence[int],
    windows: Mapping[int, WindowCounts],
) -> tuple[list[LowScoreDecision], LowScoreDetector]:
    """The detector's decisions at each of ``watermarks`` (window boundaries, in order) from
    its stored state, on the answers of the window each boundary closes (``windows``: start ->
    counts, segment values folded); and the detector after them (the caller stores its
    ``to_json`` under :func:`low_scores_key` after the alerts)."""
    detector = LowScoreDetector()
    raw = table.get(low_scores_key(funnel))
    if raw is not None:
        detector.load_json(orjson.loads(raw))
    decisions = [d for w in watermarks for d in judge_low_scores(funnel, detector, w, windows)]
    return decisions, detector


def judge_low_scores(
    funnel: FunnelDefinition,
    detector: LowScoreDetector,
    watermark: int,
    windows: Mapping[int, WindowCounts],
) -> list[LowScoreDecision]:
    """One boundary: the answers of the window it closes, per subject, judged (the worker's
    and a replay's)."""
    kinds = [survey.kind for survey in funnel.surveys]
    closed = windows.get(watermark - funnel.window_ms)
    window: dict[SubjectKey, tuple[int, int]] = {}
    if closed is not None:
        for key, scores in scores_by_subject(closed.answers, kinds).items():
            window[key] = (scores.answers, scores.low)
    return detector.evaluate(watermark, window)  # type: ignore[arg-type]


def _subject_names(funnel: FunnelDefinition, key: SubjectKey) -> tuple[str, str, str | None]:
    survey, stage, dim, value = key
    return (
        funnel.surveys[survey].name,
        funnel.stages[stage].name if stage >= 0 else "none",
        f"{funnel.segments[dim].name}={value}" if dim >= 0 else None,
    )


def low_score_alert_record(
    funnel: FunnelDefinition,
    decision: LowScoreDecision,
    dashboard_url: str | None,
    runbook_url: str | None,
) -> Alert:
    """The alert a decision makes: names the funnel, survey, stage, segment value and the low
    share before (the baseline) and now."""
    key: SubjectKey = decision.subject  # type: ignore[assignment]
    survey, stage, segment = _subject_names(funnel, key)
    where = f"{survey} at {stage}" + (f", {segment}" if segment else "")
    low = "1-2" if funnel.surveys[key[0]].kind == "csat" else "0-6"
    if decision.state == "firing":
        summary = (
            f"{funnel.name}: low answers ({low}) of {where} rose to "
            f"{percent(decision.observed_share)} ({decision.low} of {decision.answers} answers) "
            f"from {percent(decision.expected_share)} before (p={decision.p_value:.1e})."
        )
    else:
        summary = (
            f"{funnel.name}: low answers of {where} are back to normal: "
            f"{percent(decision.observed_share)} in the last window against "
            f"{percent(decision.expected_share)} before."
        )
    subject = [funnel.name, "low_score", survey, stage, *([segment] if segment else [])]
    alert_id = "/".join([*subject, str(decision.fired_at_ms)])
    return Alert(
        event_id=f"{alert_id}/{decision.state}/{decision.evaluated_at_ms}",
        alert_id=alert_id,
        kind="low_score",
        state=decision.state,
        severity="warning",
        funnel=funnel.name,
        step=stage,
        window_start=utc_datetime(decision.evaluated_at_ms - funnel.window_ms),
        window_end=utc_datetime(decision.evaluated_at_ms),
        observed_rate=round(decision.observed_share, 6),
        expected_rate=round(decision.expected_share, 6),
        p_value=decision.p_value,
        decided=decision.answers,
        dropped=decision.low,
        excess_dropped=round(decision.low - decision.expected_share * decision.answers, 2),
        dropped_value=0.0,
        summary=summary,
        dashboard_url=dashboard_url,
        runbook_url=runbook_url,
        survey=survey,
        segment=segment,
    )
