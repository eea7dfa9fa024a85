"""Can this client get in, and may it do what a command needs? Answered before the work starts.

A TLS or SASL failure inside aiokafka becomes a logged retry and, much later, "Unable to
bootstrap"; a missing ACL becomes an error without a topic name, or, for a topic that may not be
described, an empty read. So every Kafka command of the CLI and the worker first calls
:func:`check_login` (one connection, the clients' own TLS and SASL options) and
:func:`require_access` (what it reads, writes, creates and which group it joins), and each
failure becomes one typed :class:`streamer.errors.KafkaAccessError` line that names the setting,
or the principal, operation and topic. No message carries a password or key: they hold only
setting names, the user name, hosts, topics and the broker's error codes.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient
from aiokafka.conn import create_conn
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    GroupCoordinatorNotAvailableError,
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAuthorizationFailedError,
    UnsupportedSaslMechanismError,
)
from aiokafka.protocol.admin import CreateTopicsRequest
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.protocol.produce import ProduceRequest

from streamer.errors import (
    KafkaAccessError,
    KafkaAuthenticationError,
    KafkaAuthorizationError,
    KafkaTLSError,
    StreamerError,
)
from streamer.kafka_io import client_options, make_admin, make_client, principal, run_sync
from streamer.settings import ENV_PREFIX, Settings

__all__ = [
    "AccessNeeds",
    "check_login",
    "explain_kafka_error",
    "no_broker",
    "ready",
    "require_access",
]

_SEE_README = "see README, Secure Kafka"
_UNKNOWN_TOPIC = 3
_TOPIC_ALREADY_EXISTS = 36
_TOPIC_AUTHORIZATION_FAILED = TopicAuthorizationFailedError.errno
_GROUP_AUTHORIZATION_FAILED = GroupAuthorizationFailedError.errno
# Two workers starting together race to create the same topics.
_TOPIC_RACE_ATTEMPTS = 20
_TOPIC_RACE_PAUSE_S = 0.5


def _env(setting: str) -> str:
    return f"{setting} ({ENV_PREFIX}{setting.upper()})"


@dataclass(frozen=True)
class AccessNeeds:
    """What one command does on Kafka: the ACLs it needs, by resource."""

    read: tuple[str, ...] = ()  # Read (and Describe) on each topic
    write: tuple[str, ...] = ()  # Write (and Describe)
    create: tuple[str, ...] = ()  # Create, for those that do not exist yet
    groups: tuple[str, ...] = ()  # Read on each consumer group
    operations: dict[str, set[str]] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        wanted: dict[str, set[str]] = {}
        for topics, operation in ((self.read, "Read"), (self.write, "Write")):
            for topic in topics:
                wanted.setdefault(topic, set()).add(operation)
        for topic in self.create:
            wanted.setdefault(topic, set()).add("Create")
        object.__setattr__(self, "operations", wanted)

    def grant_hint(self, topic: str) -> str:
        return ", ".join(sorted(self.operations.get(topic, {"Describe"})))


# --- login ---------------------------------------------------------------------------------
def _tls_error(settings: Settings, server: str, exc: ssl.SSLError) -> KafkaTLSError:
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or str(exc.reason)
        if "mismatch" in reason.lower():
            return KafkaTLSError(
                f"the TLS certificate of the broker at {server} does not name that host "
                f"({reason}): connect by a name the certificate holds, or set "
                f"{_env('kafka_ssl_check_hostname')}=false"
            )
        trusted = settings.ssl_cafile or "the system trust store"
        return KafkaTLSError(
            f"the TLS certificate of the broker at {server} is not trusted ({reason}; trusted: "
            f"{trusted}): set {_env('kafka_ssl_cafile')} to the PEM file of the CA that signed it"
        )
    if settings.kafka_ssl_certfile is None and "certificate_required" in str(exc).lower():
        return KafkaTLSError(
            f"the broker at {server} requires a client certificate ({exc.reason}): set "
            f"{_env('kafka_ssl_certfile')} (and {_env('kafka_ssl_keyfile')}) to one signed by "
            "a CA it trusts"
        )
    if settings.kafka_ssl_certfile is not None and "alert" in str(exc.reason or "").lower():
        return KafkaTLSError(
            f"the broker at {server} refused the client certificate ({exc.reason}): check "
            f"{_env('kafka_ssl_certfile')} and {_env('kafka_ssl_keyfile')}"
        )
    return KafkaTLSError(
        f"TLS with the broker at {server} failed ({exc.reason or exc}): does "
        f"{_env('kafka_security_protocol')}={settings.kafka_security_protocol} match its listener?"
    )


def _login_error(settings: Settings, server: str, exc: Exception) -> KafkaAccessError | None:
    if isinstance(exc, ssl.SSLError):
        return _tls_error(settings, server, exc)
    if isinstance(exc, SaslAuthenticationFailed):
        # SCRAM answers an unknown user and a wrong password alike, by design.
        return KafkaAuthenticationError(
            f"the broker at {server} refused the SASL login of user "
            f"{settings.kafka_sasl_username!r} ({settings.kafka_sasl_mechanism}): the user is "
            f"unknown or the password is wrong; check {_env('kafka_sasl_username')} and "
            f"{_env('kafka_sasl_password')}"
        )
    if isinstance(exc, UnsupportedSaslMechanismError | IllegalSaslStateError):
        return KafkaAuthenticationError(
            f"the broker at {server} does not accept {_env('kafka_sasl_mechanism')}="
            f"{settings.kafka_sasl_mechanism}: use a mechanism its listener enables"
        )
    if isinstance(exc, ConnectionRefusedError):
        return None  # nothing listens there: no broker, not a protocol mismatch
    if isinstance(exc, KafkaConnectionError | asyncio.IncompleteReadError | ConnectionError):
        # The port answered, then the broker hung up: typically a protocol mismatch (a
        # PLAINTEXT client on a TLS listener, or SASL expected and not spoken), or a TLS
        # listener that requires a client certificate (TLS 1.3 says so after the handshake).
        certificate = ""
        if settings.kafka_security_protocol.endswith("SSL") and not settings.kafka_ssl_certfile:
            certificate = (
                f", or does it require a client certificate: set {_env('kafka_ssl_certfile')} "
                f"and {_env('kafka_ssl_keyfile')}"
            )
        return KafkaAccessError(
            f"the broker at {server} closed the connection before answering: does "
            f"{_env('kafka_security_protocol')}={settings.kafka_security_protocol} match its "
            f"listener{certificate}?"
        )
    return None


async def check_login(settings: Settings, timeout: float = 10.0) -> bool:
    """Connect to the bootstrap servers as every client will (TLS and SASL included).

    True when one answers; False when none listens; raises :class:`KafkaAccessError` (TLS,
    SASL or protocol mismatch) when one listens but will not let this client in."""
    options = client_options(settings)
    refused: KafkaAccessError | None = None
    for server in settings.bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            connection = await asyncio.wait_for(
                create_conn(
                    host,
                    int(port),
                    ssl_context=options.get("ssl_context"),
                    security_protocol=settings.kafka_security_protocol,
                    sasl_mechanism=options.get("sasl_mechanism"),
                    sasl_plain_username=options.get("sasl_plain_username"),
                    sasl_plain_password=options.get("sasl_plain_password"),
                    request_timeout_ms=int(timeout * 1000),
                ),
                timeout,
            )
        except (OSError, KafkaError, asyncio.IncompleteReadError, TimeoutError) as exc:
            explained = _login_error(settings, server.strip(), exc)
            if explained is None and isinstance(exc, ConnectionRefusedError | TimeoutError):
                continue  # nothing listens there
            refused = refused or explained or KafkaAccessError(f"{server}: {exc!r}")
            continue
        connection.close()
        return True
    if refused is not None:
        raise refused
    return False


# --- authorization -------------------------------------------------------------------------
def _denied(
    settings: Settings, operation: str, kind: str, name: str, grant: str
) -> KafkaAuthorizationError:
    return KafkaAuthorizationError(
        f"{principal(settings)} may not {operation} {kind} {name} (Kafka: "
        f"{kind.upper()}_AUTHORIZATION_FAILED): grant it {grant} on {kind} {name} ({_SEE_README})"
    )


async def require_access(settings: Settings, needs: AccessNeeds, timeout: float = 15.0) -> None:
    """Raise :class:`KafkaAuthorizationError` naming the first topic or group ``needs`` lists
    that the broker's ACLs do not allow; nothing is written.

    Describe comes from a metadata request; Read from a fetch of zero bytes; Write from a
    produce request carrying no records (the broker checks Write before it looks at the records,
    and writes nothing); Create from a validate-only CreateTopics; a group from FindCoordinator
    (Describe on the group, which its Read ACL implies)."""
    client = make_client(settings, request_timeout_ms=int(timeout * 1000))
    await client.bootstrap()
    try:
        for attempt in range(_TOPIC_RACE_ATTEMPTS):
            try:
                await _check_topics(settings, needs, client)
                break
            except _TopicAppeared as appeared:
                if attempt == _TOPIC_RACE_ATTEMPTS - 1:
                    raise KafkaAccessError(
                        f"topic {appeared.topic} exists, yet the broker has not described it "
                        f"for {_TOPIC_RACE_ATTEMPTS * _TOPIC_RACE_PAUSE_S:.0f}s: is a broker's "
                        "metadata behind? try again"
                    ) from None
                await asyncio.sleep(_TOPIC_RACE_PAUSE_S)
    finally:
        await client.close()
    if needs.groups:
        admin = make_admin(settings, request_timeout_ms=int(timeout * 1000))
        await admin.start()
        try:
            for group in needs.groups:
                await _find_coordinator(settings, admin, group)
        finally:
            await admin.close()


async def _find_coordinator(settings: Settings, admin: AIOKafkaAdminClient, group: str) -> None:
    for attempt in range(20):
        try:
            await admin.find_coordinator(group)
            return
        except GroupAuthorizationFailedError:
            raise _denied(settings, "join", "group", group, "Read") from None
        except GroupCoordinatorNotAvailableError:
            # A fresh cluster creates its offsets topic on the first lookup.
            if attempt == 19:
                raise
            await asyncio.sleep(0.5)


class _TopicAppeared(Exception):
    """A topic the metadata called unknown existed a moment later: another worker (or an admin)
    created it in between, or the broker's metadata lagged its creation. Ask again."""

    def __init__(self, topic: str) -> None:
        super().__init__(topic)
        self.topic = topic


async def _check_topics(settings: Settings, needs: AccessNeeds, client: AIOKafkaClient) -> None:
    topics = list(needs.operations)
    if not topics:
        return
    node = client.get_random_node()
    metadata = await client.send(node, MetadataRequest(topics, allow_auto_topic_creation=False))
    leaders: dict[str, int] = {}
    missing: dict[str, int] = {}  # topic -> the metadata's error code for it
    for error_code, topic, _internal, partitions, *_ in metadata.topics:
        creatable = "Create" in needs.operations[topic]
        if error_code == _TOPIC_AUTHORIZATION_FAILED and not creatable:
            raise _denied(settings, "describe", "topic", topic, needs.grant_hint(topic))
        if error_code in (_UNKNOWN_TOPIC, _TOPIC_AUTHORIZATION_FAILED):
            # A topic one may create but not (yet) describe reads as unauthorized too: the
            # validate-only create below tells them apart.
            missing[topic] = error_code
        elif partitions:
            first = min(partitions, key=lambda entry: entry[1])
            leaders[topic] = first[2]
    for topic in missing:
        if "Create" not in needs.operations[topic]:
            raise KafkaAuthorizationError(
                f"topic {topic} does not exist: create it (`streamer topics` as an admin)"
            )
    if missing:
        response = await client.send(
            client.get_random_node(),
            CreateTopicsRequest(
                [(name, 1, 1, [], []) for name in missing], timeout=1000, validate_only=True
            ),
        )
        for topic, code, *_ in response.topic_errors:
            if code == _TOPIC_AUTHORIZATION_FAILED:
                raise _denied(settings, "create", "topic", topic, needs.grant_hint(topic))
            if code == _TOPIC_ALREADY_EXISTS:
                if missing[topic] == _UNKNOWN_TOPIC:  # created since the metadata request
                    raise _TopicAppeared(topic)
                # exists, yet the metadata would not describe it: no Describe ACL
                raise _denied(settings, "describe", "topic", topic, needs.grant_hint(topic))
    for topic, leader in leaders.items():
        wanted = needs.operations[topic]
        if "Read" in wanted:
            fetch = FetchRequest(0, 0, 1, 0, [(topic, [(0, 0, 1)])])
            if _topic_error(await client.send(leader, fetch)) == _TOPIC_AUTHORIZATION_FAILED:
                raise _denied(settings, "read", "topic", topic, needs.grant_hint(topic))
        if "Write" in wanted:
            probe = ProduceRequest(None, 1, 5000, [(topic, [(0, b"")])])
            if _topic_error(await client.send(leader, probe)) == _TOPIC_AUTHORIZATION_FAILED:
                raise _denied(settings, "write", "topic", topic, needs.grant_hint(topic))


def _topic_error(response: object) -> int:
    """The error code of the one partition a probe addressed."""
    for _topic, partitions in ((entry[0], entry[1]) for entry in response.topics):  # type: ignore[attr-defined]
        for partition in partitions:
            return int(partition[1])
    return 0


# --- errors met mid-command ----------------------------------------------------------------
def _names(exc: KafkaError) -> str:
    parts: list[str] = []
    for arg in exc.args:
        if isinstance(arg, str):
            parts.append(arg)
        elif isinstance(arg, Iterable):
            parts.extend(str(item) for item in arg)
    return ", ".join(parts) or "(a topic the broker did not name)"


def explain_kafka_error(settings: Settings, exc: Exception) -> StreamerError:
    """One line for an aiokafka error that escaped a command, the setting or topic named."""
    if isinstance(exc, TopicAuthorizationFailedError):
        return _denied(settings, "use", "topic", _names(exc), "the ACLs the command needs")
    if isinstance(exc, GroupAuthorizationFailedError):
        return _denied(settings, "join", "group", _names(exc), "Read")
    explained = _login_error(settings, settings.bootstrap_servers, exc)
    if explained is not None and not isinstance(exc, KafkaConnectionError):
        return explained
    try:
        reachable = run_sync(check_login(settings))
    except KafkaAccessError as access:
        return access
    if not reachable:
        return no_broker(settings)
    return StreamerError(f"Kafka: {type(exc).__name__}: {exc}")


def no_broker(settings: Settings) -> StreamerError:
    if not settings.uses_local_broker:
        return StreamerError(
            f"no Kafka broker answers at {settings.bootstrap_servers} ({ENV_PREFIX}"
            "KAFKA_BOOTSTRAP): is the cluster up and the address right?"
        )
    return StreamerError(
        f"no Kafka broker answers at {settings.bootstrap_servers}; start one with "
        "`streamer kafka up` (or set STREAMER_KAFKA_BOOTSTRAP to your cluster)"
    )


async def ready(settings: Settings, needs: AccessNeeds | None = None) -> None:
    """Before a command touches Kafka: a broker answers, lets this client in (TLS, SASL) and
    allows what ``needs`` lists (ACLs); otherwise a :class:`StreamerError` naming what to fix."""
    if not await check_login(settings):
        raise no_broker(settings)
    if needs is not None:
        await require_access(settings, needs)
