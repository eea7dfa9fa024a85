"""Every exception streamer raises on purpose, in one place.

Rejected *input* is not an exception that travels: it becomes a :class:`streamer.events.DeadLetter`
record. These exceptions are for operators: bad configuration, a missing tool, a broker that
cannot start. Their messages are one line and never contain secrets.
"""

from __future__ import annotations

__all__ = [
    "BrokerError",
    "ConfigError",
    "InputFileError",
    "KafkaAccessError",
    "KafkaAuthenticationError",
    "KafkaAuthorizationError",
    "KafkaTLSError",
    "MissingToolError",
    "OutputRefusedError",
    "PlanError",
    "PortInUseError",
    "RangeNotHeldError",
    "StreamerError",
]


class StreamerError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero."""


class ConfigError(StreamerError):
    """Settings or a definition file are invalid; the message names the field and the source."""


class InputFileError(StreamerError):
    """A data file given to a command (a recording to load) is not in its format; the message
    names the file, the line and what is wrong with it."""


class PlanError(ConfigError):
    """A tracking plan is invalid or hostile; the message is one line naming ``file:line`` and
    the field (``streamer.plan.load``)."""


class MissingToolError(StreamerError):
    """A program streamer needs (java, mvn) is not installed; the message says what to install."""


class BrokerError(StreamerError):
    """The local Kafka broker could not be resolved, formatted, started or stopped."""


class PortInUseError(BrokerError):
    """A port the local broker needs is taken by another process."""


class OutputRefusedError(StreamerError):
    """The broker refused a stage's state write or output record: the stage stops with its
    input unacked, so a restart does the work again instead of losing it."""


class RangeNotHeldError(StreamerError):
    """A replay range starts before what the input topics still hold (retention)."""


class KafkaAccessError(StreamerError):
    """The broker answered but would not let this client in or act: TLS, SASL or an ACL."""


class KafkaTLSError(KafkaAccessError):
    """The TLS handshake failed (an untrusted or mismatched certificate, a bad client key); the
    message names the kafka_ssl_* setting to fix."""


class KafkaAuthenticationError(KafkaAccessError):
    """The broker refused the SASL login; the message names the kafka_sasl_* settings."""


class KafkaAuthorizationError(KafkaAccessError):
    """An ACL is missing; the message names the principal, the operation and the topic or group."""
