"""Every formatter of streamer.escaping over hostile strings: the output holds none of them live.

"Live" is judged by each output's own rules, written here from the outputs' documentation and
not from the functions under test: Slack parses ``<...>`` as mentions and links and formats
outside code spans; a terminal obeys ESC sequences and rich its ``[...]`` markup; a log reader
takes every line start as a new record.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from streamer.escaping import (
    ALERTMANAGER_ANNOTATION_CHARS,
    ALERTMANAGER_LABEL_CHARS,
    InertLogRecord,
    alertmanager_annotation,
    alertmanager_label,
    cut,
    log_text,
    slack_code,
    slack_link,
    slack_mrkdwn,
    slack_plain,
    terminal_text,
    visible,
)
from streamer.events import Alert
from streamer.notify.routes import alertmanager_alert
from streamer.notify.slack import slack_message
from streamer.schemas import EXAMPLES

HOSTILE = [
    "<!channel>",
    "<!here>",
    "<!everyone>",
    "<@U123>",
    "<#C123>",
    "<!subteam^S123>",
    "<https://evil.example/reset|Payments down: reset here>",
    "x` <!channel> <https://evil.example/reset|Payments down: reset here> `",
    "```",
    "`",
    "*bold* _italic_ ~strike~",
    "> quoted",
    "&lt;!channel&gt;",
    "line one\nline two",
    "\r\n2026-12-07 04:00:00,000 CRITICAL streamer.worker: forged",
    "\x1b[2J\x1b[31mred\x1b[0m",
    "\x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\",
    "\u202egnp.exe",
    "a\u2066b\u2069c\u200fd",
    "zero\u200bwidth\ufeff",
    "nul\x00byte",
    "\x85next line\u2028\u2029",
    "[link=https://evil.example]click[/link] [bold red]x[/]",
    "x" * 10_000,
    "",
]
hostile_text = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(max_size=300),
    st.lists(st.sampled_from(HOSTILE), min_size=1, max_size=4).map("".join),
    st.tuples(st.text(max_size=20), st.sampled_from(HOSTILE), st.text(max_size=20)).map("".join),
)

# Characters no output may carry raw: controls (C0, DEL, C1), line and paragraph separators,
# bidi controls and zero-width characters. Unicode's own categories decide, not our regex.
_BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _dangerous(char: str) -> bool:
    category = unicodedata.category(char)
    return category in ("Cc", "Zl", "Zp") or char in _BIDI or category == "Cf"


def assert_one_inert_line(text: str) -> None:
    bad = [hex(ord(c)) for c in text if _dangerous(c)]
    assert not bad, f"raw {bad} in {text!r}"


def _slack_live(mrkdwn: str) -> list[str]:
    """What Slack would parse in a mrkdwn text: control sequences (``<...>``) anywhere, and
    formatting or raw ``&`` outside code spans (its formatting reference)."""
    live = re.findall(r"<[^>]*>?", mrkdwn)
    outside = re.sub(r"`[^`]*`", "", mrkdwn)
    live += re.findall(r"&(?!amp;|lt;|gt;)", mrkdwn)
    live += re.findall(r"[*_~`]", outside)
    return live


@given(hostile_text)
@settings(max_examples=400)
def test_a_slack_code_span_is_one_closed_span_with_no_mention_link_or_format(
    value: str,
) -> None:
    out = slack_code(value)
    assert out.startswith("`")
    assert out.endswith("`")
    assert out.count("`") == 2
    assert _slack_live(out) == []
    assert_one_inert_line(out)
    assert len(out) <= 5 * 120 + 2  # cut to 120 characters, each at worst an entity


@given(hostile_text)
@settings(max_examples=300)
def test_operator_text_in_mrkdwn_has_no_mention_or_link(value: str) -> None:
    out = slack_mrkdwn(value)
    assert re.findall(r"<[^>]*>?", out) == []
    assert re.findall(r"&(?!amp;|lt;|gt;)", out) == []
    assert_one_inert_line(out)


@given(hostile_text)
@settings(max_examples=300)
def test_plain_text_is_one_line_and_within_slacks_limit(value: str) -> None:
    out = slack_plain(value)
    assert_one_inert_line(out)
    assert len(out) <= 3000


def test_a_settings_link_cannot_be_bent_by_its_text() -> None:
    link = slack_link("https://grafana.example/d/x?a=1&b=2|<evil>", "Dash|board <!here>")
    assert link == (
        "<https://grafana.example/d/x?a=1&amp;b=2%7C%3Cevil%3E|Dash¦board &lt;!here&gt;>"
    )
    assert link.count("<") == 1
    assert link.count(">") == 1
    assert link.count("|") == 1


@given(hostile_text)
@settings(max_examples=300)
def test_alertmanager_values_carry_no_markup_any_receiver_renders(value: str) -> None:
    label, annotation = alertmanager_label(value), alertmanager_annotation(value)
    limits = (ALERTMANAGER_LABEL_CHARS, ALERTMANAGER_ANNOTATION_CHARS)
    for out, limit in zip((label, annotation), limits, strict=True):
        assert not set(out) & set("<>&`")
        assert_one_inert_line(out)
        assert len(out) <= limit


@given(hostile_text)
@settings(max_examples=300)
def test_terminal_text_renders_as_written_with_no_escape_sequence(value: str) -> None:
    out = terminal_text(value)
    console = Console(force_terminal=True, color_system="truecolor", width=100_000)
    with console.capture() as captured:
        console.print(out, style="bold", end="", highlight=False, soft_wrap=True)
    printed = captured.get()
    # the only escape sequences are the style around it; the value shows as its visible text
    shown = re.sub(r"\x1b\[[0-9;]*m", "", printed)
    assert shown == cut(visible(value), 200)
    assert "\x1b]" not in printed  # no operating-system command: no terminal hyperlink
    assert_one_inert_line(shown)


@given(hostile_text)
@settings(max_examples=300)
def test_a_log_message_is_one_line(value: str) -> None:
    out = log_text(value)
    assert_one_inert_line(out)
    assert "\n" not in out
    assert len(out) <= 4000


@given(hostile_text)
@settings(max_examples=200)
def test_a_log_record_with_a_hostile_value_and_traceback_forges_no_line(value: str) -> None:
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        raise ValueError(f"bad value {value}")
    except ValueError as exc:
        record = InertLogRecord(
            "streamer.x", logging.INFO, __file__, 1, "dead-lettered %s", (value,), (
                type(exc), exc, exc.__traceback__)
        )  # fmt: skip
    first, *rest = formatter.format(record).split("\n")
    assert first.endswith("dead-lettered " + log_text(value)) or len(value) > 3900
    assert rest, "the traceback follows"
    assert all(line.startswith("  ") for line in rest), rest
    for line in [first, *rest]:
        assert_one_inert_line(line)


def test_cut_says_how_much_it_left_out() -> None:
    assert cut("a" * 10, 10) == "a" * 10
    out = cut("a" * 10_000, 100)
    assert len(out) <= 100
    assert out.endswith("…(+9920 chars)")


def hostile_alert(value: str) -> Alert:
    """The example alert with ``value`` as the segment value that explains it, quoted in the
    summary as the detector writes it."""
    alert = Alert.model_validate(EXAMPLES["alert"])
    first = alert.explanations[0]
    quoted = f"{first.dimension}={first.value}"
    assert quoted in alert.summary
    return alert.model_copy(
        update={
            "explanations": [first.model_copy(update={"value": value})],
            "summary": alert.summary.replace(quoted, f"{first.dimension}={value}"),
        }
    )


def _mrkdwn_texts(message: dict[str, Any]) -> list[str]:
    texts = [str(message["text"])]
    for block in message["blocks"]:
        parts = [block.get("text"), *block.get("fields", []), *block.get("elements", [])]
        texts += [p["text"] for p in parts if p and p["type"] == "mrkdwn"]
    return texts


@given(hostile_text)
@settings(max_examples=300, deadline=None)
def test_a_slack_alert_shows_a_hostile_segment_value_only_inert(value: str) -> None:
    """Rendered with the hostile value and with a harmless one, every mrkdwn text is the same
    outside code spans (the value lives only inside them, where nothing is live), and the only
    links are the two from settings."""
    hostile, harmless = slack_message(hostile_alert(value)), slack_message(hostile_alert("SAFE"))
    settings_links = {
        "<https://grafana.example.com/d/streamer-funnel|Dashboard>",
        "<https://wiki.example.com/runbooks/checkout-drop-off|Runbook>",
    }
    for text, reference in zip(_mrkdwn_texts(hostile), _mrkdwn_texts(harmless), strict=True):
        spans = re.findall(r"`[^`]*`", text)
        assert re.sub(r"`[^`]*`", "``", text) == re.sub(r"`[^`]*`", "``", reference)
        assert set(re.findall(r"<[^>]*>", text)) <= settings_links
        for span in spans:
            assert "<" not in span
            assert ">" not in span
            assert_one_inert_line(span)
        assert_one_inert_line(text.replace("\n", " "))  # Slack's own line breaks are ours
    assert _header(hostile) == _header(harmless)  # plain text: operator names only


def _header(message: dict[str, Any]) -> str:
    [header] = [b["text"]["text"] for b in message["blocks"] if b["type"] == "header"]
    return str(header)


def test_the_issue_s_attack_reads_well_and_inert() -> None:
    attack = "x` <!channel> <https://evil.example/reset|Payments down: reset here> `"
    message = slack_message(hostile_alert(attack))
    [where] = [b for b in message["blocks"] if "*Where*" in str(b)]
    assert where["text"]["text"].startswith(
        "*Where*\n• `payment_method=x\u02cb &lt;!channel&gt; &lt;https://evil.example/reset|"
        "Payments down: reset here&gt; \u02cb`: 94% of excess"
    )
    assert message["text"].startswith(
        ":rotating_light: [FIRING] checkout: payment-&gt;order drop-off. payment-&gt;order "
        "drop-off is 32.5% against 8.1% expected"
    )


@given(hostile_text)
@settings(max_examples=200, deadline=None)
def test_an_alertmanager_alert_carries_a_hostile_value_only_as_inert_capped_text(
    value: str,
) -> None:
    from datetime import UTC, datetime

    pushed = alertmanager_alert(hostile_alert(value), datetime(2026, 12, 7, tzinfo=UTC))
    assert pushed["labels"]["step"] == "payment->order"  # an operator's name, as written
    for text in (pushed["labels"]["segment"], pushed["annotations"]["summary"]):
        assert not set(text) & set("<>&`"), text
        assert_one_inert_line(text)
    assert len(pushed["labels"]["segment"]) <= ALERTMANAGER_LABEL_CHARS
    assert len(pushed["annotations"]["summary"]) <= ALERTMANAGER_ANNOTATION_CHARS
    # the only URLs are the settings' (runbook, dashboard)
    assert (
        pushed["annotations"]["runbook_url"]
        == "https://wiki.example.com/runbooks/checkout-drop-off"
    )
    assert pushed["generatorURL"] == "https://grafana.example.com/d/streamer-funnel"
