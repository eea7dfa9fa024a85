"""Untrusted values leaving the process: one function per kind of output.

Anyone can choose a clickstream value (a URL parameter sets ``utm_campaign``; a browser sets
``device``), so a segment value, a property or an id is hostile until it is shown inert. Each
output has its own markup, so each has its own function here, and its rules are in its
docstring; ``docs/security.md`` has the threat model. Values are never escaped where they are
*stored* (records on Kafka keep the bytes as sent): only where they are rendered.

The base of every function is :func:`visible`: characters that could move the cursor, end a
line, reorder the text or hide in it are written as escape sequences, so what a reader sees is
what the value holds, on one line.
"""

from __future__ import annotations

import logging
import traceback
import unicodedata
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.text import Text

__all__ = [
    "ALERTMANAGER_ANNOTATION_CHARS",
    "ALERTMANAGER_LABEL_CHARS",
    "LOG_MESSAGE_CHARS",
    "SLACK_TEXT_CHARS",
    "SLACK_VALUE_CHARS",
    "TERMINAL_VALUE_CHARS",
    "InertLogRecord",
    "alertmanager_annotation",
    "alertmanager_label",
    "alertmanager_name",
    "cut",
    "install_inert_log_records",
    "log_text",
    "slack_code",
    "slack_link",
    "slack_mrkdwn",
    "slack_plain",
    "terminal_text",
    "visible",
]

# Unicode's categories of what a reader cannot see as itself: controls (Cc: newline, ESC, NUL,
# DEL, NEL...), format characters (Cf: bidi overrides that make "gnp.exe" read "exe.png",
# zero-width characters, tag characters that smuggle hidden text), lone surrogates (Cs: they
# cannot even be encoded), private use and unassigned code points, line and paragraph
# separators. Spaces (Zs) stay.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_GRAVE_LOOKALIKE = "\u02cb"  # modifier letter grave accent: closes no code span

SLACK_VALUE_CHARS = 120  # a quoted "dimension=value" in an alert: enough for any real one
SLACK_TEXT_CHARS = 2_900  # Slack refuses a text object over 3,000 characters
TERMINAL_VALUE_CHARS = 200
LOG_MESSAGE_CHARS = 4_000
ALERTMANAGER_LABEL_CHARS = 128
ALERTMANAGER_ANNOTATION_CHARS = 1_024


def _escaped(char: str) -> str:
    short = _SHORT.get(char)
    if short is not None:
        return short
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def visible(text: str) -> str:
    """Every character of a hidden category (controls, format characters such as bidi
    overrides and zero-width ones, surrogates, private and unassigned code points, line and
    paragraph separators) written as an escape sequence (``\\n``, ``\\x1b``, ``\\u202e``): one
    line, read in the order stored, nothing hidden. A backslash in the value stays as it is
    (the text is for reading, not for decoding back)."""
    if text.isprintable():  # the common case: nothing hidden (Python's "printable" is stricter)
        return text
    return "".join(
        _escaped(c) if unicodedata.category(c) in _HIDDEN_CATEGORIES else c for c in text
    )


def cut(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, saying how many were left out."""
    if len(text) <= limit:
        return text
    keep = max(0, limit - 20)  # the note is at most 19 characters
    return text[:keep] + f"…(+{len(text) - keep} chars)"


# --- Slack ------------------------------------------------------------------------------------
def _slack_entities(text: str) -> str:
    # Slack's three control characters (its "Escaping text" rule); nothing else is an entity.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_code(value: str, limit: int = SLACK_VALUE_CHARS) -> str:
    """An untrusted value for a Slack ``mrkdwn`` text, as an inline code span.

    - Inside a code span Slack applies no bold, italic, strike or emoji; a backtick would close
      it, so backticks become U+02CB (a modifier letter grave accent, which looks alike):
      Slack has no escape for them.
    - ``&``, ``<`` and ``>`` become ``&amp;``, ``&lt;``, ``&gt;``: without ``<`` no mention
      (``<!channel>``, ``<@U123>``), channel link or ``<url|label>`` link can be written.
    - Control characters, newlines and bidi overrides are shown escaped (:func:`visible`), so a
      value cannot start a new bullet or reorder the line; cut to ``limit`` characters.
    - An empty value shows as ``(empty)``: an empty span would print two backticks.
    """
    shown = cut(visible(value), limit).replace("`", _GRAVE_LOOKALIKE)
    return f"`{_slack_entities(shown)}`" if shown else "`(empty)`"


def slack_mrkdwn(text: str, limit: int = SLACK_TEXT_CHARS) -> str:
    """Operator text (funnel and step names, topic names) for a Slack ``mrkdwn`` text: trusted,
    but ``&``, ``<`` and ``>`` are still escaped and controls shown (:func:`visible`), so a name
    reads as written and cannot become a mention or a link. Send it with ``verbatim: true``
    so Slack does not turn a name that looks like a URL or a channel into a link. Never pass
    an event value here: it could still format (``*``, ``_``, ``~``); use :func:`slack_code`."""
    return _slack_entities(cut(visible(text), limit))


def slack_plain(text: str, limit: int = SLACK_TEXT_CHARS) -> str:
    """Text that needs no formatting, for a Slack ``plain_text`` object (send with
    ``emoji: false`` when it carries values). Slack parses no markup, mention or link in
    ``plain_text`` (its text-object reference: markup only when ``type`` is ``mrkdwn``), so
    ``&<>`` stay as they are (escaped, they would show as ``&lt;``); controls are shown
    (:func:`visible`) and the text cut to ``limit``."""
    return cut(visible(text), limit)


def slack_link(url: str, label: str) -> str:
    """A link from *settings* (dashboard, runbook), never from an event value: ``<url|label>``
    with ``&<>|`` escaped in the label and the URL percent-encoded where Slack's link syntax
    would end it (``|``, ``>``, ``<``, spaces)."""
    safe_url = (
        visible(url).replace("|", "%7C").replace(">", "%3E").replace("<", "%3C").replace(" ", "%20")
    )
    safe_label = _slack_entities(visible(label)).replace("|", "¦")
    return f"<{safe_url.replace('&', '&amp;')}|{safe_label}>"


# --- Alertmanager (and any receiver whose template we do not control) -----------------------
# Alertmanager hands annotations to the templates of its receivers (Slack, email, PagerDuty),
# which do not escape them: the characters that start a mention, a tag, an entity or a code
# span become look-alikes, so no receiver's markup can be written from a value.
_MARKUP_LOOKALIKES = str.maketrans(
    {"<": "\u2039", ">": "\u203a", "&": "\uff06", "`": _GRAVE_LOOKALIKE}
)


def _markup_free(text: str) -> str:
    return text.translate(_MARKUP_LOOKALIKES)


def alertmanager_label(value: str, limit: int = ALERTMANAGER_LABEL_CHARS) -> str:
    """A value as an Alertmanager label value: one line (:func:`visible`), no markup any
    receiver would render (``<``, ``>``, ``&`` and backticks as look-alikes), at most
    ``limit`` characters (labels group and route alerts: a long one is noise). Never a URL."""
    return cut(_markup_free(visible(value)), limit)


def alertmanager_name(name: str, limit: int = ALERTMANAGER_LABEL_CHARS) -> str:
    """An operator's name (funnel, step) as an Alertmanager label value: one line
    (:func:`visible`), at most ``limit`` characters, its characters kept, so a silence or a
    route matches the name as the funnel file writes it (``payment->order``)."""
    return cut(visible(name), limit)


def alertmanager_annotation(text: str, limit: int = ALERTMANAGER_ANNOTATION_CHARS) -> str:
    """Text with values as an Alertmanager annotation: as :func:`alertmanager_label`, longer."""
    return cut(_markup_free(visible(text)), limit)


# --- terminal -----------------------------------------------------------------------------------
def terminal_text(value: str, limit: int = TERMINAL_VALUE_CHARS) -> Text:
    """A value for a ``rich`` table or ``console.print``, as a :class:`rich.text.Text`: rich
    parses no markup in it (``[link=...]``, ``[red]`` print as written), and ANSI and other
    control sequences are shown escaped (:func:`visible`: ``ESC[2J`` cannot clear the screen,
    an OSC 8 sequence cannot plant a link); cut to ``limit``."""
    from rich.text import Text

    return Text(cut(visible(value), limit))


# --- logs ---------------------------------------------------------------------------------------
def log_text(text: str, limit: int = LOG_MESSAGE_CHARS) -> str:
    """A log message: controls and newlines shown escaped (:func:`visible`), so a value cannot
    end the line and forge the next one (``\\n2026-12-07 ... CRITICAL ...``), cut to
    ``limit``."""
    return cut(visible(text), limit)


def _inert_traceback(exc_info: Any) -> str:
    # Every line of a traceback starts with two spaces: a value inside an exception's message
    # may hold a newline, and it must not start a line that reads like a log record.
    lines = "".join(traceback.format_exception(*exc_info)).rstrip("\n").split("\n")
    return "\n".join("  " + visible(line) for line in lines)


class InertLogRecord(logging.LogRecord):
    """A log record whose message is :func:`log_text` and whose traceback is indented, for
    every logger and handler of the process (Faust's, aiokafka's and ours alike): installed
    as the record factory by :func:`install_inert_log_records`."""

    def getMessage(self) -> str:
        if self.exc_info and not self.exc_text:
            self.exc_text = _inert_traceback(self.exc_info)
        return log_text(super().getMessage())


def install_inert_log_records() -> None:
    """Make every log record of this process an :class:`InertLogRecord`."""
    logging.setLogRecordFactory(InertLogRecord)
