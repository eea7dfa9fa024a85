"""Streamer against a broker with a SASL_SSL listener (SCRAM-SHA-512, the StandardAuthorizer on),
and against the other secured listeners the local broker serves: SASL_PLAINTEXT (the worker logs
in with PLAIN) and SSL that requires a client certificate (its only login).

The module starts its own secured local broker on free loopback ports: a throwaway CA, an admin
super user and two more SCRAM users made at format time. One scenario runs twice, on the
suite's PLAINTEXT broker and on this one, where the worker logs in as a user holding exactly
the README's ACLs and presents a client certificate with an encrypted key; what both publish
must be equal. The tools run over the same listener; bad credentials, an untrusted CA and a
missing ACL must each stop the command with one line; no password or key in any output.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from streamer.app import topic_plan
from streamer.funnel.definition import load_funnel
from streamer.kafka_io import ensure_topic_plan, read_topic
from streamer.kafka_local import LocalKafka
from streamer.settings import Settings
from streamer.testing import WorkerProcess, free_port, produce, run_cli
from streamer.tls import write_ca, write_signed_certificate
from tests.oracle import OracleResult, compute
from tests.support.acl_table import Acl, grant, readme_worker_acls
from tests.support.compare import assert_same
from tests.support.pipeline_run import Published, preload, wait_published
from tests.support.settings import isolated_settings
from tests.support.traffic import Dataset, at_ms, generate

pytestmark = pytest.mark.integration

CHECKOUT = Path(__file__).resolve().parents[2] / "deploy/funnels/checkout.yaml"
MALFORMED = b'{"event_type": "page_view", "session_id": '  # one dead letter per run
WRONG_PASSWORD = "wrong-" + secrets.token_hex(8)


@cache
def dataset() -> Dataset:
    return generate(seed=20261130, minutes=4, sessions_per_second=1.0)


@cache
def oracle() -> OracleResult:
    data = dataset()
    return compute([load_funnel(CHECKOUT)], data.oracle_events(), data.final_watermark_ms)


def _key_lines(path: Path) -> list[str]:
    """The body of a PEM key: a secret line by line."""
    return [line for line in path.read_text().splitlines() if line and "-----" not in line]


@dataclass(frozen=True)
class SecureBroker:
    broker: LocalKafka
    admin: Settings  # the super user's client settings
    passwords: dict[str, str]  # the other SCRAM users
    client_cert: Path
    client_key: Path
    key_password: str

    @property
    def admin_password(self) -> str:
        password = self.admin.kafka_sasl_password
        assert password is not None
        return password.get_secret_value()

    def secrets(self) -> list[str]:
        """Every secret of the module: passwords and the client key's encrypted body."""
        return [
            self.admin_password,
            *self.passwords.values(),
            self.key_password,
            WRONG_PASSWORD,
            *_key_lines(self.client_key),
        ]

    def as_user(self, base: Settings, user: str, **update: Any) -> Settings:
        """``base`` (names, ports) as a client of this broker logged in as ``user``, with the
        client certificate (mutual TLS) and its encrypted key."""
        values = {
            **base.model_dump(),
            "kafka_bootstrap": self.broker.bootstrap,
            "kafka_security_protocol": "SASL_SSL",
            "kafka_sasl_mechanism": "SCRAM-SHA-512",
            "kafka_sasl_username": user,
            "kafka_sasl_password": SecretStr(self.passwords.get(user) or self.admin_password),
            "kafka_ssl_cafile": self.broker.ca_file,
            "kafka_ssl_certfile": self.client_cert,
            "kafka_ssl_keyfile": self.client_key,
            "kafka_ssl_key_password": SecretStr(self.key_password),
            **update,
        }
        return Settings.model_validate(values)


def assert_no_secret(secure: SecureBroker | list[str], *outputs: str) -> None:
    """No line of any output holds a password or a line of the key."""
    lines = [line for output in outputs for line in output.splitlines()]
    assert lines, "nothing to search"
    for secret in secure if isinstance(secure, list) else secure.secrets():
        leaks = [line for line in lines if secret in line]
        assert not leaks, f"a secret leaked in: {leaks[0][:200]}"


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    tmp = tmp_path_factory.mktemp("secure")
    passwords = {"worker": secrets.token_hex(12), "lacking": secrets.token_hex(12)}
    settings = Settings(
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        kafka_data_dir=tmp / "kafka",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="admin",
        kafka_sasl_password=SecretStr(secrets.token_hex(12)),
    )
    broker = LocalKafka(settings, users=passwords)
    broker.up()
    try:
        # A client certificate from the broker's CA, its key encrypted (mutual TLS).
        key_password = secrets.token_hex(10)
        ca = broker.certificate_authority()
        client = write_signed_certificate(ca, tmp / "client", "worker", ("worker",), key_password)
        yield SecureBroker(
            broker=broker,
            admin=broker.client_settings(),
            passwords=passwords,
            client_cert=client.certificate,
            client_key=client.key,
            key_password=key_password,
        )
    finally:
        broker.destroy()


def _names(bootstrap: str, tag: str, tmp: Path) -> Settings:
    folder = tmp / f"state-{tag}"
    folder.mkdir(exist_ok=True)
    own = isolated_settings(bootstrap, tag, folder)
    return own.model_copy(update={"funnels": (CHECKOUT,)})


async def _run_scenario(settings: Settings, reader: Settings, log: Path) -> tuple[Published, str]:
    """Pre-load the dataset and one malformed message, run a worker as ``settings`` until
    every window is final, read back as ``reader``; also return the worker's log and metrics."""
    await preload(reader, dataset())
    await produce(reader, [(reader.clickstream_topic, b"broken", MALFORMED)])
    process = WorkerProcess(settings, log)
    process.start(ready_timeout=120)
    try:
        published = await wait_published(reader, oracle(), [process])
        metrics = await asyncio.to_thread(_metrics_text, process)
    finally:
        process.stop()
    return published, await asyncio.to_thread(log.read_text, errors="replace") + metrics


def _metrics_text(process: WorkerProcess) -> str:
    import urllib.request

    with urllib.request.urlopen(process.metrics_url, timeout=5) as response:
        return str(response.read().decode())


@dataclass
class Runs:
    plain: Settings
    plain_published: Published
    secured: Settings  # as the least-privilege worker user
    secured_admin: Settings
    secured_published: Published
    worker_output: str
    topics_output: str


@pytest.fixture(scope="module")
async def runs(
    secure: SecureBroker, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Runs:
    tmp = tmp_path_factory.mktemp("runs")
    tag = secrets.token_hex(4)
    plain = _names(kafka_bootstrap, tag, tmp)
    plain_published, _ = await _run_scenario(plain, plain, tmp / "plain.log")

    secured = secure.as_user(_names(kafka_bootstrap, tag, tmp), "worker", web_port=free_port(),
                             data_dir=tmp / "state-secured")  # fmt: skip
    admin = secure.as_user(secured, "admin")
    # The admin creates the topics; the worker's user gets the README's ACLs and no more.
    topics = run_cli(admin, "topics", timeout=120)
    assert topics.returncode == 0, topics.stderr
    await grant(secure.admin, "worker", readme_worker_acls(secured))
    secured_published, worker_output = await _run_scenario(secured, admin, tmp / "secured.log")
    return Runs(
        plain=plain,
        plain_published=plain_published,
        secured=secured,
        secured_admin=admin,
        secured_published=secured_published,
        worker_output=worker_output,
        topics_output=topics.stdout + topics.stderr,
    )


def test_a_least_privilege_worker_over_sasl_ssl_publishes_what_the_plaintext_run_does(
    runs: Runs, secure: SecureBroker
) -> None:
    plain, secured = runs.plain_published, runs.secured_published
    assert plain.windows, "the scenario publishes windows"
    assert plain.abandonments, "the scenario publishes abandonments"
    assert all(secured.final.values())
    assert_same("windows", plain.windows, secured.windows)
    assert_same("segments", plain.segments, secured.segments)
    assert_same("abandonments", plain.abandonments, secured.abandonments)
    assert secured.alerts == plain.alerts
    # Equal to each other is not enough (a defect of the worker would be in both runs): the
    # secured run's numbers are the oracle's, computed from the dataset by the spec.
    expected = oracle()
    assert_same("windows", expected.windows, secured.windows)
    assert_same("segments", expected.segments, secured.segments)
    assert_same("abandonments", expected.abandonments, secured.abandonments)
    assert "'kafka_security_protocol': 'SASL_SSL'" in runs.worker_output  # its settings line
    assert "streamer_events_total" in runs.worker_output  # the metrics are part of it
    assert_no_secret(secure, runs.worker_output, runs.topics_output)


def _cli_both(runs: Runs, *args: str) -> tuple[str, str, str]:
    """The same command on the PLAINTEXT broker and, as the admin, on the SASL_SSL one:
    (plain stdout, secured stdout, secured stderr)."""
    plain = run_cli(runs.plain, *args, timeout=120)
    assert plain.returncode == 0, plain.stderr
    secured = run_cli(runs.secured_admin, *args, timeout=120)
    assert secured.returncode == 0, secured.stderr
    return plain.stdout, secured.stdout, secured.stderr


def test_funnel_show_from_topic_and_replay_give_the_same_over_sasl_ssl(
    runs: Runs, secure: SecureBroker
) -> None:
    plain, secured, secured_err = _cli_both(runs, "funnel", "show", "--from-topic", "--json")
    assert json.loads(plain), "funnel show has windows to summarise"
    assert json.loads(secured) == json.loads(plain)
    times = [at_ms(event) for event in dataset().arrivals]
    start = datetime.fromtimestamp(min(times) / 1000, UTC).replace(second=0, microsecond=0)
    end = datetime.fromtimestamp(max(times) / 1000, UTC) + timedelta(minutes=1)
    span = ("--from", start.isoformat(), "--to", end.isoformat(), "--no-run-info")
    plain_report, secured_report, report_err = _cli_both(runs, "replay", *span)
    assert json.loads(plain_report)["funnels"], "the replay reports the funnel"
    assert json.loads(secured_report) == json.loads(plain_report)
    assert_no_secret(secure, secured, secured_err, secured_report, report_err)


def test_dlq_over_sasl_ssl(runs: Runs, secure: SecureBroker) -> None:
    plain, secured, secured_err = _cli_both(runs, "dlq", "inspect", "--json", "--limit", "0")
    letters = [json.loads(line) for line in plain.splitlines()]
    assert len(letters) == 1, "the one malformed message"
    shape = [(x["reason"], x["source_topic"], x["payload_base64"]) for x in letters]
    assert [
        (x["reason"], x["source_topic"], x["payload_base64"])
        for x in map(json.loads, secured.splitlines())
    ] == shape
    dry = run_cli(runs.secured_admin, "dlq", "replay", "--dry-run", timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert "would replay 1 dead letter(s)" in dry.stdout
    assert_no_secret(secure, secured, secured_err, dry.stdout, dry.stderr)


async def test_the_simulator_produces_over_sasl_ssl(
    secure: SecureBroker, tmp_path: Path, kafka_bootstrap: str
) -> None:
    settings = secure.as_user(_names(kafka_bootstrap, secrets.token_hex(4), tmp_path), "admin")
    result = run_cli(settings, "simulate", "--rate", "40", "--duration", "2", timeout=120)
    assert result.returncode == 0, result.stderr
    produced = int(result.stdout.split()[1])  # "produced N events in M sessions: ..."
    assert produced > 0
    records = await read_topic(settings, settings.clickstream_topic)
    records += await read_topic(settings, settings.checkout_topic)
    assert len(records) == produced
    assert_no_secret(secure, result.stdout + result.stderr)


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return str(errors[0])


@pytest.mark.parametrize(
    "command", [("worker",), ("funnel", "show", "--from-topic")], ids=["worker", "funnel-show"]
)
@pytest.mark.parametrize(
    ("case", "named"),
    [
        ("wrong password", "kafka_sasl_password (STREAMER_KAFKA_SASL_PASSWORD)"),
        ("unknown user", "kafka_sasl_username (STREAMER_KAFKA_SASL_USERNAME)"),
        ("untrusted CA", "kafka_ssl_cafile (STREAMER_KAFKA_SSL_CAFILE)"),
    ],
)
def test_bad_credentials_stop_with_the_setting_named_and_no_secret(
    secure: SecureBroker, tmp_path: Path, kafka_bootstrap: str, command: tuple[str, ...],
    case: str, named: str,
) -> None:  # fmt: skip
    base = _names(kafka_bootstrap, secrets.token_hex(4), tmp_path)
    if case == "wrong password":
        settings = secure.as_user(base, "worker", kafka_sasl_password=SecretStr(WRONG_PASSWORD))
    elif case == "unknown user":
        settings = secure.as_user(base, "mallory", kafka_sasl_password=SecretStr(WRONG_PASSWORD))
    else:
        other_ca = write_ca(tmp_path / "other-ca").certificate
        settings = secure.as_user(base, "worker", kafka_ssl_cafile=other_ca)
    result = run_cli(settings, *command, timeout=120)
    line = _one_error_line(result)
    assert named in line
    assert_no_secret(secure, result.stdout, result.stderr)


async def test_a_missing_acl_stops_the_worker_with_the_topic_named(
    secure: SecureBroker, tmp_path: Path, kafka_bootstrap: str
) -> None:
    settings = secure.as_user(_names(kafka_bootstrap, secrets.token_hex(4), tmp_path), "lacking")
    admin = secure.as_user(settings, "admin")
    await ensure_topic_plan(admin, topic_plan(admin))
    documented = readme_worker_acls(settings)
    removed = Acl("topic", "literal", settings.windows_topic, "Write")
    assert removed in documented
    await grant(secure.admin, "lacking", [acl for acl in documented if acl != removed])
    result = run_cli(settings, "worker", timeout=120)
    line = _one_error_line(result)
    assert f"may not write topic {settings.windows_topic}" in line
    assert f"grant it Read, Write on topic {settings.windows_topic}" in line
    # The tools name what they may not do too: this user may not write the windows topic,
    # and nobody granted it the DLQ replay ledger.
    replay = run_cli(settings, "dlq", "replay", timeout=120)
    ledger = f"{settings.dlq_topic}.replayed"
    assert f"may not create topic {ledger}" in _one_error_line(replay)
    assert_no_secret(secure, result.stdout, result.stderr, replay.stdout, replay.stderr)


def test_config_show_masks_every_secret(secure: SecureBroker, tmp_path: Path) -> None:
    settings = secure.as_user(_names("127.0.0.1:1", "cfg", tmp_path), "worker")
    shown = run_cli(settings, "config", "show", timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "kafka_sasl_password = '**********'" in shown.stdout
    assert "kafka_ssl_key_password = '**********'" in shown.stdout
    assert_no_secret(secure, shown.stdout, shown.stderr)


def test_kafka_up_serves_sasl_ssl_and_its_clients_trust_its_ca_unasked(tmp_path: Path) -> None:
    """`streamer kafka up` as a user runs it: SASL_SSL from the environment, no CA setting."""
    password = secrets.token_hex(12)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
    env.update(
        STREAMER_KAFKA_PORT=str(free_port()),
        STREAMER_KAFKA_CONTROLLER_PORT=str(free_port()),
        STREAMER_KAFKA_DATA_DIR=str(tmp_path / "kafka"),
        STREAMER_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        STREAMER_KAFKA_SASL_MECHANISM="SCRAM-SHA-256",
        STREAMER_KAFKA_SASL_USERNAME="ops",
        STREAMER_KAFKA_SASL_PASSWORD=password,
    )

    def streamer(*args: str, **override: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "streamer", *args], env={**env, **override},
            capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip

    outputs: list[str] = []
    try:
        up = streamer("kafka", "up")
        outputs += [up.stdout, up.stderr]
        assert up.returncode == 0, up.stderr
        assert f"(SASL_SSL, CA {tmp_path / 'kafka' / 'tls' / 'ca.pem'}" in up.stdout
        topics = streamer("topics")
        outputs += [topics.stdout, topics.stderr]
        assert topics.returncode == 0, topics.stderr
        assert "clickstream: 4 partition(s)" in topics.stdout
    finally:
        down = streamer("kafka", "down")
        outputs += [down.stdout, down.stderr]
    assert "stopped local Kafka" in down.stdout
    plaintext = {k: v for k, v in env.items() if "SASL" not in k}
    switched = subprocess.run(
        [sys.executable, "-m", "streamer", "kafka", "up"],
        env={**plaintext, "STREAMER_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"},
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert "was made for SASL_SSL" in _one_error_line(switched)
    assert "streamer kafka reset" in switched.stderr
    log = (tmp_path / "kafka" / "broker.log").read_text(errors="replace")
    assert_no_secret([password], *outputs, switched.stderr, log)


# --- the other listeners: SASL_PLAINTEXT with PLAIN, and SSL requiring a client certificate ---


@dataclass(frozen=True)
class ListenerBroker:
    """A local broker serving one more kind of listener, and how its users connect."""

    broker: LocalKafka
    admin: Settings  # the super user's client settings
    worker: dict[str, Any]  # the settings that make a client log in as User:worker
    secrets: list[str]  # every password and key line of the broker and its users

    def as_worker(self, base: Settings) -> Settings:
        return Settings.model_validate({**base.model_dump(), **self.worker})

    def as_admin(self, base: Settings) -> Settings:
        security = {name: value for name, value in self.admin.model_dump().items()
                    if name.startswith("kafka_")}  # fmt: skip
        return Settings.model_validate({**base.model_dump(), **security})


def _listener_broker(tmp: Path, protocol: str) -> ListenerBroker:
    """A started broker whose client listener is ``protocol``: SASL_PLAINTEXT (the worker
    logs in with PLAIN) or SSL (it presents a certificate named ``worker``; nothing else)."""
    ports = {"kafka_port": free_port(), "kafka_controller_port": free_port()}
    if protocol == "SASL_PLAINTEXT":
        worker_password = secrets.token_hex(12)
        admin_password = secrets.token_hex(12)
        settings = Settings(**ports, kafka_data_dir=tmp / "kafka",
                            kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN",
                            kafka_sasl_username="admin",
                            kafka_sasl_password=SecretStr(admin_password))  # fmt: skip
        broker = LocalKafka(settings, users={"worker": worker_password})
        broker.up()
        worker = {
            "kafka_bootstrap": broker.bootstrap,
            "kafka_security_protocol": "SASL_PLAINTEXT",
            "kafka_sasl_mechanism": "PLAIN",
            "kafka_sasl_username": "worker",
            "kafka_sasl_password": SecretStr(worker_password),
        }
        found = [admin_password, worker_password, broker.broker_secret_file.read_text().strip()]
        return ListenerBroker(broker, broker.client_settings(), worker, found)
    settings = Settings(**ports, kafka_data_dir=tmp / "kafka", kafka_security_protocol="SSL")
    broker = LocalKafka(settings)
    broker.up()
    key_password = secrets.token_hex(10)
    ca = broker.certificate_authority()
    client = write_signed_certificate(ca, tmp / "client", "worker", ("worker",), key_password)
    worker = {
        "kafka_bootstrap": broker.bootstrap,
        "kafka_security_protocol": "SSL",
        "kafka_ssl_cafile": broker.ca_file,
        "kafka_ssl_certfile": client.certificate,
        "kafka_ssl_keyfile": client.key,
        "kafka_ssl_key_password": SecretStr(key_password),
    }
    found = [key_password, broker.broker_secret_file.read_text().strip(), *_key_lines(client.key),
             *_key_lines(broker.admin_key)]  # fmt: skip
    return ListenerBroker(broker, broker.client_settings(), worker, found)


@pytest.fixture(scope="module")
def sasl_plaintext(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ListenerBroker]:
    served = _listener_broker(tmp_path_factory.mktemp("sasl-plaintext"), "SASL_PLAINTEXT")
    try:
        yield served
    finally:
        served.broker.destroy()


@pytest.fixture(scope="module")
def ssl_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ListenerBroker]:
    served = _listener_broker(tmp_path_factory.mktemp("ssl-only"), "SSL")
    try:
        yield served
    finally:
        served.broker.destroy()


@pytest.mark.parametrize("listener", ["sasl_plaintext", "ssl_only"])
async def test_a_least_privilege_worker_counts_right_over_sasl_plain_and_over_mutual_tls(
    listener: str, request: pytest.FixtureRequest, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The worker as User:worker holding exactly the README's ACLs, logged in with SASL PLAIN
    on a SASL_PLAINTEXT listener, or by its client certificate alone on an SSL listener that
    requires one: what it publishes is the oracle's; no secret in its log or the broker's."""
    served: ListenerBroker = request.getfixturevalue(listener)
    settings = served.as_worker(_names(kafka_bootstrap, secrets.token_hex(4), tmp_path))
    admin = served.as_admin(settings)
    topics = run_cli(admin, "topics", timeout=120)
    assert topics.returncode == 0, topics.stderr
    await grant(served.admin, "worker", readme_worker_acls(settings))
    published, output = await _run_scenario(settings, admin, tmp_path / "worker.log")
    expected = oracle()
    assert all(published.final.values())
    assert_same("windows", expected.windows, published.windows)
    assert_same("segments", expected.segments, published.segments)
    assert_same("abandonments", expected.abandonments, published.abandonments)
    protocol = served.worker["kafka_security_protocol"]
    assert f"'kafka_security_protocol': '{protocol}'" in output  # its settings line
    broker_log = served.broker.log_file.read_text(errors="replace")
    assert_no_secret(served.secrets, output, topics.stdout + topics.stderr, broker_log)


def test_the_ssl_listener_refuses_a_client_without_a_certificate_naming_the_setting(
    ssl_only: ListenerBroker, kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = ssl_only.as_worker(_names(kafka_bootstrap, secrets.token_hex(4), tmp_path))
    anonymous = settings.model_copy(
        update={"kafka_ssl_certfile": None, "kafka_ssl_keyfile": None,
                "kafka_ssl_key_password": None}
    )  # fmt: skip
    result = run_cli(anonymous, "worker", timeout=120)
    assert "kafka_ssl_certfile (STREAMER_KAFKA_SSL_CERTFILE)" in _one_error_line(result)
    assert_no_secret(ssl_only.secrets, result.stdout, result.stderr)
