"""Delivering alerts: the Notifier protocol, Slack, and a recording notifier for tests."""

from streamer.notify.base import Delivery, DeliveryOutcome, Notifier
from streamer.notify.recording import RecordingNotifier
from streamer.notify.slack import SlackNotifier, slack_message

__all__ = [
    "Delivery",
    "DeliveryOutcome",
    "Notifier",
    "RecordingNotifier",
    "SlackNotifier",
    "slack_message",
]
