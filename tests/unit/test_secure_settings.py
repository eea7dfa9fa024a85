"""TLS and SASL settings, the one place clients take them from, and the README's ACL table."""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
import pytest
from aiokafka.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError

from streamer.app import create_app, faust_broker_options, internal_topics, worker_access
from streamer.errors import ConfigError, KafkaAuthorizationError
from streamer.kafka_access import explain_kafka_error
from streamer.kafka_io import client_options, ssl_context
from streamer.kafka_local import LocalKafka
from streamer.settings import Settings, load_settings
from streamer.tls import CertificateFiles, write_ca, write_signed_certificate
from tests.support.acl_table import readme_worker_acls

KEY_PASSWORD = "key-secret-4711"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertificateFiles, CertificateFiles]:
    folder = tmp_path_factory.mktemp("pki")
    ca = write_ca(folder)
    client = write_signed_certificate(ca, folder, "client", ("127.0.0.1",), KEY_PASSWORD)
    return ca, client


def _sasl_ssl(**extra: object) -> Settings:
    return load_settings(
        kafka_bootstrap="broker:9096",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="svc",
        kafka_sasl_password="pw-secret-0815",
        **extra,
    )


def _with_client_key(pki: tuple[CertificateFiles, CertificateFiles], key_password: str) -> Settings:
    ca, client = pki
    return _sasl_ssl(
        kafka_ssl_cafile=ca.certificate,
        kafka_ssl_certfile=client.certificate,
        kafka_ssl_keyfile=client.key,
        kafka_ssl_key_password=key_password,
    )


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "kafka_sasl_mechanism, kafka_sasl_username"),
        ({"kafka_sasl_mechanism": "PLAIN"}, "kafka_sasl_mechanism is set but"),
        ({"kafka_ssl_cafile": "ca.pem"}, "kafka_ssl_cafile set but"),
        (
            {"kafka_security_protocol": "SSL", "kafka_ssl_keyfile": "k.pem"},
            "kafka_ssl_keyfile and kafka_ssl_key_password need kafka_ssl_certfile",
        ),
    ],
)
def test_inconsistent_security_settings_are_refused_by_name(
    values: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings(**values)


def test_tls_context_trusts_the_ca_and_loads_an_encrypted_client_key(
    pki: tuple[CertificateFiles, CertificateFiles],
) -> None:
    settings = _with_client_key(pki, KEY_PASSWORD)
    context = ssl_context(settings)
    assert context is not None
    assert context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED
    issuers = [dict(item[0] for item in cert["subject"]) for cert in context.get_ca_certs()]
    assert issuers == [{"commonName": "streamer local CA"}]
    options = client_options(settings)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_plain_password"] == "pw-secret-0815"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    unchecked = ssl_context(settings.model_copy(update={"kafka_ssl_check_hostname": False}))
    assert unchecked is not None
    assert not unchecked.check_hostname


def test_a_wrong_key_password_names_the_setting_not_the_password(
    pki: tuple[CertificateFiles, CertificateFiles],
) -> None:
    settings = _with_client_key(pki, "not-the-key-password")
    with pytest.raises(ConfigError, match="kafka_ssl_key_password") as caught:
        ssl_context(settings)
    assert "not-the-key-password" not in str(caught.value)
    assert KEY_PASSWORD not in str(caught.value)


def test_a_missing_ca_file_names_the_setting(tmp_path: Path) -> None:
    settings = _sasl_ssl(kafka_ssl_cafile=tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match=r"kafka_ssl_cafile: .*nope.pem does not exist"):
        client_options(settings)


def test_the_local_broker_ca_is_trusted_without_a_setting(tmp_path: Path) -> None:
    local = load_settings(
        kafka_data_dir=tmp_path,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="admin",
        kafka_sasl_password="pw",
    )
    assert local.ssl_cafile == tmp_path / "tls" / "ca.pem"
    assert load_settings().ssl_cafile is None
    with pytest.raises(ConfigError, match="streamer kafka up"):
        ssl_context(local)  # not written yet


def test_faust_gets_the_same_tls_and_sasl_as_every_other_client(
    pki: tuple[CertificateFiles, CertificateFiles],
) -> None:
    ca, _ = pki
    sasl = faust_broker_options(_sasl_ssl(kafka_ssl_cafile=ca.certificate))
    credentials = sasl["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.protocol.value == "SASL_SSL"
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert credentials.username == "svc"
    assert isinstance(credentials.ssl_context, ssl.SSLContext)
    tls = faust_broker_options(
        load_settings(kafka_security_protocol="SSL", kafka_ssl_cafile=ca.certificate)
    )
    assert isinstance(tls["broker_credentials"], faust.SSLCredentials)
    assert "broker_credentials" not in faust_broker_options(load_settings())


@pytest.mark.parametrize("keyed", [True, False])
def test_the_readme_acl_table_is_what_the_worker_checks(keyed: bool) -> None:
    settings = Settings(store="memory", app_id="shop", source_keyed_by_session=keyed)
    app = create_app(settings)
    needs = worker_access(app)
    acls = readme_worker_acls(settings)
    documented = {
        (acl.name, acl.operation)
        for acl in acls
        if acl.resource == "topic" and acl.pattern == "literal"
    }
    internal = set(internal_topics(app))
    checked = {(topic, op) for topic, ops in needs.operations.items() for op in ops}
    assert documented == {(topic, op) for topic, op in checked if topic not in internal}
    prefixes = {(acl.name, acl.operation) for acl in acls if acl.pattern == "prefixed"}
    assert {name for name, _ in prefixes} == {"shop-"}
    for topic, op in checked:
        if topic in internal:
            assert topic.startswith("shop-")
            assert ("shop-", op) in prefixes
    groups = {acl.name for acl in acls if acl.resource == "group"}
    assert groups == set(needs.groups) == {"shop"}
    if not keyed:  # the re-key row counts only on that path
        assert {(settings.rekeyed_topic, "Read"), (settings.rekeyed_topic, "Write")} <= documented


def test_authorization_errors_met_mid_command_name_the_topic_or_group() -> None:
    settings = _sasl_ssl()
    topic = explain_kafka_error(settings, TopicAuthorizationFailedError("funnel.windows"))
    assert isinstance(topic, KafkaAuthorizationError)
    assert "Kafka user 'svc' may not use topic funnel.windows" in str(topic)
    group = explain_kafka_error(settings, GroupAuthorizationFailedError("streamer"))
    assert "may not join group streamer" in str(group)
    assert "pw-secret-0815" not in str(topic) + str(group)


def test_the_local_broker_refuses_a_password_it_cannot_pass_on(tmp_path: Path) -> None:
    secured = {
        "kafka_data_dir": tmp_path,
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": "admin",
        "kafka_sasl_password": "a,b=c",
    }
    with pytest.raises(ConfigError, match="without spaces, quotes") as caught:
        LocalKafka(load_settings(**secured))
    assert "a,b=c" not in str(caught.value)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_sasl_mechanism": "PLAIN",
             "kafka_sasl_username": "admin", "kafka_sasl_password": "pw-admin"},
            ["listeners=SASL_PLAINTEXT://127.0.0.1:",
             "listener.name.sasl_plaintext.sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,"
             "SCRAM-SHA-512",
             'user_admin="pw-admin" user_worker="pw-worker";',
             "super.users=User:streamer-broker;User:admin\n"],
        ),
        (
            {"kafka_security_protocol": "SSL"},
            ["listeners=SSL://127.0.0.1:", "ssl.client.auth=required",
             "ssl.principal.mapping.rules=RULE:^CN=([^,]+)$/$1/,DEFAULT",
             "super.users=User:streamer-broker;User:broker;User:streamer-admin\n"],
        ),
    ],
)  # fmt: skip
def test_the_local_broker_serves_sasl_plaintext_and_ssl_with_client_certificates(
    values: dict[str, str], expected: list[str], tmp_path: Path
) -> None:
    broker = LocalKafka(load_settings(kafka_data_dir=tmp_path, **values),
                        users={"worker": "pw-worker"})  # fmt: skip
    broker.data_dir.mkdir(parents=True, exist_ok=True)
    broker._write_properties()
    properties = broker.properties_file.read_text()
    for line in expected:
        assert line in properties
    assert broker.properties_file.stat().st_mode & 0o077 == 0  # passwords: the owner's only
