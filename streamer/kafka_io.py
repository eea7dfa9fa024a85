"""aiokafka clients configured from :class:`Settings` (security options in one place)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import ssl
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, TopicAuthorizationFailedError

from streamer.errors import ConfigError, KafkaAuthorizationError
from streamer.settings import Settings

__all__ = [
    "client_options",
    "ensure_topic_plan",
    "ensure_topics",
    "make_admin",
    "make_client",
    "make_consumer",
    "make_producer",
    "metadata_ready",
    "offset_at",
    "principal",
    "read_range",
    "read_topic",
    "run_sync",
    "ssl_context",
    "stop_consumer",
    "topic_partitions",
]

T = TypeVar("T")


def _readable_file(setting: str, path: Path, settings: Settings) -> str:
    if path.is_file():
        return str(path)
    hint = (
        ": start the local broker with `streamer kafka up` (it writes its CA there) or set it"
        if setting == "kafka_ssl_cafile" and settings.kafka_ssl_cafile is None
        else f": set STREAMER_{setting.upper()} to a PEM file"
    )
    raise ConfigError(f"{setting}: {path} does not exist{hint}")


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of every client (None for PLAINTEXT and SASL_PLAINTEXT): verifies the
    broker against ``settings.ssl_cafile`` (or the system store), checks its host name unless
    turned off, and presents a client certificate when one is set (mutual TLS)."""
    if not settings.kafka_security_protocol.endswith("SSL"):
        return None
    cafile = settings.ssl_cafile
    try:
        context = ssl.create_default_context(
            cafile=None if cafile is None else _readable_file("kafka_ssl_cafile", cafile, settings)
        )
    except ssl.SSLError as exc:
        raise ConfigError(
            f"kafka_ssl_cafile: {cafile} is not a PEM CA certificate ({exc.reason})"
        ) from None
    context.check_hostname = settings.kafka_ssl_check_hostname
    if settings.kafka_ssl_certfile is not None:
        certfile = _readable_file("kafka_ssl_certfile", settings.kafka_ssl_certfile, settings)
        keyfile = settings.kafka_ssl_keyfile
        password = settings.kafka_ssl_key_password
        try:
            context.load_cert_chain(
                certfile,
                None if keyfile is None else _readable_file("kafka_ssl_keyfile", keyfile, settings),
                password=None if password is None else password.get_secret_value(),
            )
        except ssl.SSLError as exc:
            # The reason is OpenSSL's (e.g. "bad decrypt"), never the password itself.
            raise ConfigError(
                f"kafka_ssl_certfile/kafka_ssl_keyfile: cannot load the client certificate and "
                f"key ({exc.reason}); check the files and kafka_ssl_key_password"
            ) from None
    return context


def client_options(settings: Settings) -> dict[str, Any]:
    """Connection and security options shared by every client streamer makes: each aiokafka
    client below, and the Faust app (``streamer.app.faust_broker_options`` derives its
    credentials from these)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
    }
    context = ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if settings.kafka_sasl_mechanism:
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        if settings.kafka_sasl_password is not None:
            options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return options


def principal(settings: Settings) -> str:
    """Who the broker sees, for messages: ``User:name`` under SASL, else the protocol."""
    if settings.kafka_sasl_username:
        return f"Kafka user {settings.kafka_sasl_username!r}"
    return f"this client ({settings.kafka_security_protocol})"


async def _any_port_open(servers: str, timeout: float) -> bool:
    for server in servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
        except (OSError, TimeoutError):
            continue
        writer.close()
        await writer.wait_closed()
        return True
    return False


def make_producer(settings: Settings, **extra: Any) -> AIOKafkaProducer:
    return AIOKafkaProducer(**client_options(settings), **extra)


def make_consumer(settings: Settings, *topics: str, **extra: Any) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(*topics, **client_options(settings), **extra)


def make_admin(settings: Settings, **extra: Any) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**client_options(settings), **extra)


def make_client(settings: Settings, **extra: Any) -> AIOKafkaClient:
    return AIOKafkaClient(**client_options(settings), **extra)


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """Stop a consumer, tolerating aiokafka#647: a consumer without a group stopped soon after
    start re-raises the cancellation of its own internal task. A real cancellation of the
    calling task still propagates."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise


async def metadata_ready(settings: Settings, timeout: float = 5.0) -> bool:
    """True when a broker at the bootstrap address answers a metadata request."""
    if not await _any_port_open(settings.bootstrap_servers, timeout):
        return False  # nothing listens yet: skip aiokafka, which logs every refused connect
    client = make_client(settings, request_timeout_ms=int(timeout * 1000))
    try:
        await asyncio.wait_for(client.bootstrap(), timeout)
    except (KafkaError, OSError, TimeoutError):
        return False
    finally:
        await client.close()
    return True


async def topic_partitions(settings: Settings, topic: str) -> list[int]:
    """Partition ids of ``topic``; empty when it does not exist."""
    client = make_client(settings)
    await client.bootstrap()
    try:
        cluster = await client.fetch_all_metadata()
        return sorted(cluster.partitions_for_topic(topic) or ())
    finally:
        await client.close()


async def ensure_topics(
    settings: Settings,
    names: Iterable[str],
    partitions: int | None = None,
    configs: dict[str, dict[str, str]] | None = None,
) -> None:
    """Create the topics that do not exist yet (existing ones are left as they are)."""
    admin = make_admin(settings)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(
                name,
                num_partitions=partitions or settings.topic_partitions,
                replication_factor=settings.topic_replication,
                topic_configs=(configs or {}).get(name, {}),
            )
            for name in dict.fromkeys(names)
            if name not in existing
        ]
        if wanted:
            # Another process may create one between list and create: that is fine.
            with contextlib.suppress(TopicAlreadyExistsError):
                response = await admin.create_topics(wanted)
                for topic, code, *_ in response.topic_errors:
                    if code == TopicAuthorizationFailedError.errno:
                        raise KafkaAuthorizationError(
                            f"{principal(settings)} may not create topic {topic}: grant it "
                            "Create on the topic, or create the topics first with `streamer "
                            "topics` as an admin (see README, Secure Kafka)"
                        )
            await _wait_until_listed(settings, [topic.name for topic in wanted])
    finally:
        await admin.close()


async def _wait_until_listed(settings: Settings, names: list[str], timeout: float = 10.0) -> None:
    """A topic just created reaches the brokers' metadata a moment after CreateTopics returns
    (KRaft); a partition count read before that is 0 (seen by the worker's co-partitioning
    check on a loaded machine)."""
    client = make_client(settings)
    await client.bootstrap()
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        while asyncio.get_running_loop().time() < deadline:
            cluster = await client.fetch_all_metadata()
            if all(cluster.partitions_for_topic(name) for name in names):
                return
            await asyncio.sleep(0.1)
    finally:
        await client.close()


def _is_local(settings: Settings) -> bool:
    """The local broker, or a cluster on this machine (a development broker)."""
    hosts = {server.strip().rpartition(":")[0] for server in settings.bootstrap_servers.split(",")}
    return settings.uses_local_broker or hosts <= {"localhost", "127.0.0.1", "::1", "[::1]"}


async def ensure_topic_plan(
    settings: Settings, plan: dict[str, tuple[int, dict[str, str]]]
) -> None:
    """Create missing topics of ``plan`` (name -> (partitions, config))."""
    if settings.topic_replication == 1 and not _is_local(settings):
        logging.getLogger(__name__).warning(
            "topic_replication is 1: topics streamer creates on %s get one replica and lose data "
            "with that broker; set STREAMER_TOPIC_REPLICATION (typically 3) for a shared cluster",
            settings.bootstrap_servers,
        )
    for partitions in sorted({count for count, _ in plan.values()}):
        names = [name for name, (count, _) in plan.items() if count == partitions]
        await ensure_topics(
            settings, names, partitions, configs={name: plan[name][1] for name in names}
        )


async def read_range(
    settings: Settings, topic: str, partition: int, start: int, end: int, timeout: float = 60.0
) -> tuple[int, list[ConsumerRecord[bytes, bytes]]]:
    """The log start offset of ``topic[partition]`` and its records with offsets in
    ``[start, end)``, read outside any consumer group. Raises :class:`TimeoutError` when the
    range cannot be read within ``timeout`` seconds (broker unreachable)."""
    tp = TopicPartition(topic, partition)
    consumer = make_consumer(settings, enable_auto_commit=False, group_id=None)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    await consumer.start()
    try:
        consumer.assign([tp])
        earliest = int((await consumer.beginning_offsets([tp]))[tp])
        consumer.seek(tp, max(start, earliest))
        records: list[ConsumerRecord[bytes, bytes]] = []
        while await consumer.position(tp) < end:
            if loop.time() > deadline:
                raise TimeoutError(
                    f"could not read {topic}[{partition}] offsets {start}..{end - 1} "
                    f"within {timeout:.0f}s"
                )
            batch = await consumer.getmany(tp, timeout_ms=1000)
            records.extend(r for r in batch.get(tp, ()) if r.offset < end)
        return earliest, records
    finally:
        await stop_consumer(consumer)


async def committed_offset(settings: Settings, topic: str, partition: int) -> int | None:
    """The committed offset of the worker's consumer group (``app_id``) on a partition, or
    None when it has none. Asked outside the group (an offset fetch joins nothing)."""
    tp = TopicPartition(topic, partition)
    consumer = make_consumer(settings, group_id=settings.app_id, enable_auto_commit=False)
    await consumer.start()
    try:
        offset = await consumer.committed(tp)
        return int(offset) if offset is not None and offset >= 0 else None
    finally:
        await stop_consumer(consumer)


async def offset_at(settings: Settings, topic: str, partition: int, at_ms: int) -> int:
    """The first offset of ``topic[partition]`` written at or after ``at_ms`` (broker time),
    else its log end; never below its log start."""
    tp = TopicPartition(topic, partition)
    consumer = make_consumer(settings, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        found = (await consumer.offsets_for_times({tp: max(0, at_ms)})).get(tp)
        if found is not None:
            return int(found.offset)
        return int((await consumer.end_offsets([tp]))[tp])
    finally:
        await stop_consumer(consumer)


async def read_topic(settings: Settings, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every ``(key, value)`` of ``topic`` up to its end offsets at the time of the call."""
    assignment = [TopicPartition(topic, p) for p in await topic_partitions(settings, topic)]
    if not assignment:
        return []
    consumer = make_consumer(settings, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        consumer.assign(assignment)
        await consumer.seek_to_beginning(*assignment)
        end = await consumer.end_offsets(assignment)
        remaining = {tp for tp in assignment if end[tp] > 0}
        records: list[tuple[bytes | None, bytes | None]] = []
        while remaining:
            batch = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, messages in batch.items():
                for message in messages:
                    if message.offset < end[tp]:
                        records.append((message.key, message.value))
                if await consumer.position(tp) >= end[tp]:
                    remaining.discard(tp)
        return records
    finally:
        await stop_consumer(consumer)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even when a loop runs in this thread."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()
