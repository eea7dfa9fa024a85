"""One frozen settings object for every command.

Values come, highest precedence first, from: keyword arguments (tests), environment variables
prefixed ``STREAMER_``, a TOML file named by ``STREAMER_CONFIG`` (or ``--config``), defaults.
Validation errors are re-raised as :class:`streamer.errors.ConfigError` naming the field and
where its value came from (the file, or the environment variable).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import socket
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from streamer.errors import ConfigError
from streamer.resources import deploy_dir

__all__ = ["ENV_PREFIX", "Settings", "load_settings", "settings_env"]

ENV_PREFIX = "STREAMER_"
_STATE_DIR = Path(".state")
# STREAMER_ variables that are not settings: the config file's name.
_NOT_SETTINGS = frozenset({"config"})
# Kafka's own rule for topic names (kafka.common.internals.Topic).
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_TOPIC_SETTINGS = (
    "clickstream_topic",
    "checkout_topic",
    "dlq_topic",
    "rekeyed_topic",
    "units_topic",
    "partials_topic",
    "windows_topic",
    "abandonments_topic",
    "alerts_topic",
    "failed_alerts_topic",
    "baselines_topic",
)


class Settings(BaseSettings):
    """Everything a streamer process needs to know; immutable once validated."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        frozen=True,
        extra="forbid",
        validate_default=True,
    )

    # --- Kafka -----------------------------------------------------------------------------
    kafka_bootstrap: str | None = Field(
        default=None,
        description="host:port[,host:port] of an existing cluster; unset = the local broker",
    )
    kafka_version: str = Field(
        default="4.1.1",
        pattern=r"^\d+\.\d+\.\d+$",
        description="Apache Kafka version of the local broker (resolved from Maven Central)",
    )
    kafka_port: int = Field(
        default=9092, ge=1, le=65535, description="port of the local broker (127.0.0.1)"
    )
    kafka_controller_port: int = Field(
        default=9093, ge=1, le=65535, description="KRaft controller port of the local broker"
    )
    kafka_cache_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache/streamer/kafka",
        description="where the local broker's jars are kept, one folder per version",
    )
    kafka_data_dir: Path = Field(
        default=_STATE_DIR / "kafka",
        description="the local broker's storage, log, pid file and (SSL, SASL_SSL) throwaway CA",
    )
    kafka_heap: str = Field(
        default="512m", pattern=r"^\d+[mMgG]$", description="JVM heap of the local broker"
    )
    kafka_start_timeout_seconds: float = Field(
        default=90.0, gt=0, description="how long `streamer kafka up` waits for the local broker"
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        description="TLS for SSL and SASL_SSL, SASL for SASL_PLAINTEXT and SASL_SSL, "
        "for every client streamer makes",
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None,
        description="required by the SASL protocols, refused by the others",
    )
    kafka_sasl_username: str | None = Field(
        default=None, description="SASL user (required by the SASL protocols)"
    )
    kafka_sasl_password: SecretStr | None = Field(
        default=None, description="SASL password (required by the SASL protocols)"
    )
    kafka_ssl_cafile: Path | None = Field(
        default=None,
        description="PEM file of the CA that signed the brokers' certificates (SSL, SASL_SSL); "
        "unset = the system trust store, or the local broker's own CA",
    )
    kafka_ssl_certfile: Path | None = Field(
        default=None, description="PEM client certificate for mutual TLS (optional)"
    )
    kafka_ssl_keyfile: Path | None = Field(
        default=None, description="PEM private key of kafka_ssl_certfile (unset: in the certfile)"
    )
    kafka_ssl_key_password: SecretStr | None = Field(
        default=None, description="password of an encrypted kafka_ssl_keyfile"
    )
    kafka_ssl_check_hostname: bool = Field(
        default=True, description="the broker certificate must name the host connected to"
    )

    # --- Topics ----------------------------------------------------------------------------
    clickstream_topic: str = Field(default="clickstream", description="input: browsing events")
    checkout_topic: str = Field(default="checkout", description="input: checkout steps")
    dlq_topic: str = Field(default="funnel.dlq", description="rejected and late messages")
    topic_partitions: int = Field(
        default=4,
        ge=1,
        le=1024,
        description="partitions of the topics streamer creates; on the one-hop path the source "
        "topics must have this many too (Faust's table changelogs follow them)",
    )
    topic_replication: int = Field(
        default=1, ge=1, description="replication factor of the topics streamer creates"
    )
    source_keyed_by_session: bool = Field(
        default=True,
        description="producers key clickstream and checkout by session_id and both topics "
        "have topic_partitions partitions (one hop); false: any keys and partition counts, "
        "events are re-keyed through rekeyed_topic first",
    )
    rekeyed_topic: str = Field(
        default="funnel.rekeyed",
        description="internal, the re-key path only (topic_partitions partitions)",
    )
    units_topic: str = Field(
        default="funnel.units",
        description="internal, user funnels (follows: user) only: every released event keyed "
        "by its unit, for the tasks that count user funnels (topic_partitions partitions)",
    )

    # --- Ingest ----------------------------------------------------------------------------
    max_event_bytes: int = Field(
        default=64 * 1024,
        ge=256,
        le=1024 * 1024,
        description="larger message values are dead-lettered too_large",
    )
    max_clock_skew_seconds: float = Field(
        default=300.0, ge=0, description="how far ahead of broker time an event may be"
    )
    max_event_age_seconds: float = Field(
        default=7 * 86400.0, gt=0, description="older events (vs broker time) are refused"
    )

    # --- Funnels ----------------------------------------------------------------------------
    # NoDecode: the environment gives a path, a comma-separated list or a JSON list (below).
    funnels: Annotated[tuple[Path, ...], NoDecode] = Field(
        default_factory=lambda: (deploy_dir() / "funnels",),
        description="funnel definition files or folders (every *.yaml and *.yml directly inside)",
    )
    tracking_plan: str | None = Field(
        default=None,
        description="your events: a tracking plan (a YAML file, a folder of them, or "
        "preset:segment, preset:posthog, preset:snowplow, preset:streamer; "
        "docs/tracking-plan.md); unset: streamer's own twelve event types "
        "(the contract in schemas/, the same as preset:streamer)",
    )
    partials_topic: str = Field(
        default="funnel.partials",
        description="internal: each partition's counts per window and lifecycle figures, to the "
        "merger (1 partition)",
    )
    windows_topic: str = Field(
        default="funnel.windows", description="published WindowStats records, keyed by window id"
    )
    allowed_lateness_seconds: float = Field(
        default=120.0,
        ge=0,
        description="how far behind the newest event time of its partition an event may be",
    )
    idle_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="an input caught up with its log end and silent this long stops holding "
        "the watermark back",
    )
    unit_cache: int = Field(
        default=100_000,
        ge=1,
        description="user funnels: open units each unit task keeps in memory; the others wait "
        "on disk under data_dir/units (RocksDB), read back when an event or a timeout needs "
        "them",
    )
    lifecycle_cohort_weeks: int = Field(
        default=26,
        ge=1,
        le=520,
        description="lifecycle funnels: the newest cohort weeks the streamer_lifecycle_* gauges "
        "show (first-order and acquisition cohorts; older weeks stay in the records): bounds "
        "their label sets (docs/lifecycle.md)",
    )
    session_retention_seconds: float = Field(
        default=600.0,
        gt=0,
        description="a session at rest is forgotten this long (event time) after its last event "
        "(an identity a tracking plan's sessions rule cuts by inactivity: a day at least, to "
        "number its sessions)",
    )
    # Quix Streams commits every 5 s by default too: a session touched several times in that
    # span is stored once, and a restart reads at most that much input again.
    checkpoint_interval_seconds: float = Field(
        default=5.0,
        gt=0,
        description="how often a partition stores its state and offsets, then acks its input; "
        "shorter reads less input again after a crash, longer stores a busy session fewer times "
        "(2 s cost the worker about 12% of its speed on a backlog); a partition behind its log "
        "end also publishes its window counts at this pace (one caught up: every second)",
    )
    # With Faust's default (4,096) the worker sat idle 30% of the time on a backlog, most
    # likely as Faust paused partitions at 80% of the buffer and aiokafka then held back its
    # fetches; on a 200k-event backlog it ran 1.4-1.8x faster with 16k-64k
    # (docs/decisions/0003-stream-buffer.md).
    stream_buffer_messages: int = Field(
        default=65536,
        ge=1,
        description="messages the worker buffers ahead of its sessions stage (in memory); "
        "Faust's default is 4,096 (docs/decisions/0003-stream-buffer.md)",
    )

    # --- Alerts and Slack --------------------------------------------------------------------
    abandonments_topic: str = Field(
        default="funnel.abandonments", description="abandonment records and their retractions"
    )
    alerts_topic: str = Field(
        default="funnel.alerts", description="alert records (firing, repeat, resolved)"
    )
    failed_alerts_topic: str = Field(
        default="funnel.alerts.failed",
        description="alerts Slack refused (4xx), parked for `streamer alerts redeliver`",
    )
    baselines_topic: str = Field(
        default="funnel.baselines",
        description="detector baselines computed from history by `streamer backfill` (compacted, "
        "keyed by funnel): a funnel without detector state starts from its entry",
    )
    slack_webhook_url: SecretStr | None = Field(
        default=None, description="incoming webhook for warnings (and pages without their own)"
    )
    slack_page_webhook_url: SecretStr | None = Field(
        default=None, description="incoming webhook of the on-call channel (severity page)"
    )
    alertmanager_url: str | None = Field(
        default=None,
        description="Alertmanager's base URL (http://host:9093): funnel alerts are also pushed "
        "to its API, with labels funnel, step, severity, segment",
    )
    alert_webhook_url: SecretStr | None = Field(
        default=None, description="a URL that receives each alert record as JSON (a secret)"
    )
    slack_min_interval_seconds: float = Field(
        default=1.1, ge=0, description="pace per webhook (Slack allows about 1 message/s)"
    )
    slack_max_attempts: int = Field(
        default=8,
        ge=1,
        description="tries for 429/5xx/network per delivery round; rounds repeat with backoff "
        "up to 60 s",
    )
    slack_timeout_seconds: float = Field(
        default=10.0, gt=0, description="timeout of one webhook request"
    )
    dashboard_url: str | None = Field(default=None, description="linked from every alert")
    runbook_url: str | None = Field(default=None, description="linked from every alert")

    # --- Worker ----------------------------------------------------------------------------
    app_id: str = Field(
        default="streamer",
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Faust app id = consumer group; prefix of the internal topics",
    )
    instance_id: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="static group member id, stable across restarts of one worker "
        "(default: app id, host name and web port)",
    )
    group_session_timeout_seconds: float = Field(
        default=15.0,
        ge=6,
        le=300,
        description="how long the group waits for a worker that stopped heartbeating",
    )
    ready_max_lag_messages: int = Field(
        default=10_000,
        ge=0,
        description="/readyz: an assigned partition further behind its log end is not ready",
    )
    web_host: str = Field(default="127.0.0.1", description="address of /metrics and /funnel")
    web_port: int = Field(default=6066, ge=1, le=65535, description="port of /metrics and /funnel")
    store: Literal["rocksdb", "memory"] = Field(
        default="rocksdb", description="table store (memory for tests)"
    )
    data_dir: Path = Field(
        default=_STATE_DIR / "worker", description="the worker's Faust data (table stores)"
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="log level of the process"
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_any_case(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("funnels", mode="before")
    @classmethod
    def _funnels_from_text(cls, value: Any) -> Any:
        """``deploy/funnels``, ``a.yaml,b.yaml`` or ``["a.yaml"]`` (the environment's forms)."""
        if isinstance(value, str | Path):
            text = str(value).strip()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"not a JSON list of paths ({exc.msg})") from None
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator(*_TOPIC_SETTINGS)
    @classmethod
    def _kafka_topic_name(cls, value: str) -> str:
        if not _TOPIC_NAME.match(value) or value in (".", ".."):
            raise ValueError(
                f"{value!r} is not a Kafka topic name (1-249 characters of A-Z a-z 0-9 . _ -)"
            )
        return value

    @field_validator("alertmanager_url")
    @classmethod
    def _alertmanager_is_a_url(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        text = value.strip() if "://" in value else f"http://{value.strip()}"
        if urlsplit(text).scheme not in ("https", "http") or not urlsplit(text).netloc:
            raise ValueError(f"{value!r} is not an http(s) URL (e.g. http://alertmanager:9093)")
        return text

    @field_validator("slack_webhook_url", "slack_page_webhook_url", "alert_webhook_url")
    @classmethod
    def _webhook_is_a_url(cls, value: SecretStr | None) -> SecretStr | None:
        # The URL is a secret: the message describes it, never quotes it.
        if value is None or value.get_secret_value() == "":
            return None
        parts = urlsplit(value.get_secret_value().strip())
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise ValueError("not an http(s) URL (the value is a secret and is not shown)")
        return value

    @model_validator(mode="after")
    def _topics_do_not_collide(self) -> Settings:
        # Two roles on one topic mix records of different kinds; the dead-letter topic as an
        # input loops every rejected message back in.
        by_name: dict[str, list[str]] = {}
        for name in _TOPIC_SETTINGS:
            by_name.setdefault(getattr(self, name), []).append(name)
        for topic, names in by_name.items():
            if len(names) > 1:
                loop = (
                    " (a loop: rejected messages would be read again)"
                    if "dlq_topic" in names and {"clickstream_topic", "checkout_topic"} & set(names)
                    else ""
                )
                raise ValueError(
                    f"{' and '.join(names)} are both {topic!r}{loop}: give each its own topic"
                )
        return self

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_has_ports(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port], got {server.strip()!r}")
        return value.strip()

    @model_validator(mode="after")
    def _security_is_consistent(self) -> Settings:
        # A setting that the chosen protocol would silently ignore is a mistake worth a stop.
        protocol = self.kafka_security_protocol
        uses_sasl = protocol.startswith("SASL_")
        uses_tls = protocol.endswith("SSL")
        if uses_sasl:
            missing = [
                name
                for name in ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password")
                if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(f"kafka_security_protocol={protocol} needs {', '.join(missing)}")
        elif self.kafka_sasl_mechanism is not None:
            raise ValueError(
                f"kafka_sasl_mechanism is set but kafka_security_protocol={protocol} does not "
                "use SASL: set it to SASL_SSL (or SASL_PLAINTEXT)"
            )
        tls_files = ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile")
        given = [name for name in tls_files if getattr(self, name) is not None]
        if given and not uses_tls:
            raise ValueError(
                f"{', '.join(given)} set but kafka_security_protocol={protocol} does not use "
                "TLS: set it to SSL or SASL_SSL"
            )
        if self.kafka_ssl_certfile is None and (
            self.kafka_ssl_keyfile is not None or self.kafka_ssl_key_password is not None
        ):
            raise ValueError("kafka_ssl_keyfile and kafka_ssl_key_password need kafka_ssl_certfile")
        return self

    @property
    def ssl_cafile(self) -> Path | None:
        """The CA file clients trust: the configured one, else the local broker's own CA
        (written by `streamer kafka up`), else None (the system trust store)."""
        if self.kafka_ssl_cafile is not None:
            return self.kafka_ssl_cafile
        if self.uses_local_broker and self.kafka_security_protocol.endswith("SSL"):
            return self.kafka_data_dir / "tls" / "ca.pem"
        return None

    @property
    def group_instance_id(self) -> str:
        return self.instance_id or f"{self.app_id}-{socket.gethostname()}-{self.web_port}"

    @property
    def rekey_positions_topic(self) -> str:
        """The re-key path's record of how far each source partition is forwarded (internal:
        under the ``{app_id}-`` prefix of Faust's own topics)."""
        return f"{self.app_id}-rekey-positions"

    @property
    def uses_local_broker(self) -> bool:
        return self.kafka_bootstrap is None

    @property
    def bootstrap_servers(self) -> str:
        """The address clients connect to: the given cluster, or the local broker."""
        return self.kafka_bootstrap or f"127.0.0.1:{self.kafka_port}"

    def masked(self) -> dict[str, Any]:
        """Settings as plain data, secrets shown as ``**********`` (for logs and `config show`)."""
        shown: dict[str, Any] = {}
        for name, value in self:
            if isinstance(value, SecretStr):
                shown[name] = "**********" if value.get_secret_value() else ""
            elif isinstance(value, Path):
                shown[name] = str(value)
            elif isinstance(value, tuple) and all(isinstance(v, Path) for v in value):
                shown[name] = [str(v) for v in value]  # funnels: as one writes them
            else:
                shown[name] = value
        return shown

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file is passed as init kwargs by load_settings (below init, above defaults)
        # so that errors can name it; no .env files: ops set the environment explicitly.
        return (init_settings, env_settings)


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder: name a TOML file") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    # Allow both a flat file and a [streamer] table.
    section = data.get("streamer", data)
    if not isinstance(section, dict):
        raise ConfigError(f"config file {path}: [streamer] must be a table")
    return dict(section)


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Build and validate :class:`Settings`; raise :class:`ConfigError` naming field and source."""
    file_name = config_file or os.environ.get(f"{ENV_PREFIX}CONFIG")
    file_values: dict[str, Any] = {}
    path: Path | None = None
    if file_name:
        path = Path(file_name)
        file_values = _read_config_file(path)

    # Environment beats the file: drop file keys that the environment sets.
    env_keys = {key[len(ENV_PREFIX) :].lower() for key in os.environ if key.startswith(ENV_PREFIX)}
    _refuse_unknown_variables(env_keys)
    init_values = {k: v for k, v in file_values.items() if k not in env_keys}
    init_values.update(overrides)
    try:
        return Settings(**init_values)
    except SettingsError as exc:  # an environment value that cannot even be parsed
        raise ConfigError(f"invalid configuration: {exc}") from None
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            if not error["loc"]:  # a rule across several settings names them itself
                problems.append(str(error["msg"]).removeprefix("Value error, "))
                continue
            field = ".".join(str(part) for part in error["loc"])
            top = str(error["loc"][0]) if error["loc"] else ""
            if top in overrides:
                source = "argument"
            elif top in init_values and path is not None:
                source = f"file {path}"
            elif top in env_keys:
                source = f"environment variable {ENV_PREFIX}{top.upper()}"
            else:
                source = "defaults"
            message = str(error["msg"]).removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown setting"
            problems.append(f"{field} ({source}): {message}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None


def _refuse_unknown_variables(env_keys: set[str]) -> None:
    """A misspelt STREAMER_ variable would otherwise be ignored without a word."""
    unknown = sorted(env_keys - set(Settings.model_fields) - _NOT_SETTINGS)
    if not unknown:
        return
    problems = []
    for key in unknown:
        closest = difflib.get_close_matches(key, Settings.model_fields, n=1, cutoff=0.6)
        hint = f"; did you mean {ENV_PREFIX}{closest[0].upper()}?" if closest else ""
        problems.append(f"environment variable {ENV_PREFIX}{key.upper()}: unknown setting{hint}")
    raise ConfigError("invalid configuration: " + "; ".join(problems))


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment variables that reproduce ``settings`` in a child process (secrets included:
    they go to the child's environment only, never to a log or an error)."""
    env: dict[str, str] = {}
    for name, value in settings:
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if isinstance(value, tuple | list):  # complex settings are read as JSON
            value = json.dumps([str(item) for item in value])
        env[f"{ENV_PREFIX}{name.upper()}"] = str(value)
    env[f"{ENV_PREFIX}KAFKA_BOOTSTRAP"] = settings.bootstrap_servers
    return env
