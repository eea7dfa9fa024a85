from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from streamer.app import create_app
from streamer.errors import ConfigError
from streamer.settings import Settings, load_settings


def test_defaults_use_the_local_broker() -> None:
    settings = load_settings()
    assert settings.uses_local_broker
    assert settings.bootstrap_servers == f"127.0.0.1:{settings.kafka_port}"
    assert settings.kafka_version == "4.1.1"


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.web_port = 1  # type: ignore[misc]


def test_error_names_the_field_and_the_file(tmp_path: Path) -> None:
    config = tmp_path / "streamer.toml"
    config.write_text('[streamer]\nweb_port = "eighty"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert "web_port" in str(caught.value)
    assert f"file {config}" in str(caught.value)


def test_error_names_the_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMER_KAFKA_BOOTSTRAP", "no-port-here")
    with pytest.raises(ConfigError, match=r"kafka_bootstrap \(environment variable "
                       r"STREAMER_KAFKA_BOOTSTRAP\): .*host:port"):  # fmt: skip
        load_settings()


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "streamer.toml"
    config.write_text("web_prot = 8080\n")
    with pytest.raises(ConfigError, match=r"web_prot \(file .*\): unknown setting"):
        load_settings(config)


def test_environment_beats_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "streamer.toml"
    config.write_text("web_port = 7000\nkafka_port = 7001\n")
    monkeypatch.setenv("STREAMER_WEB_PORT", "7100")
    settings = load_settings(config)
    assert (settings.web_port, settings.kafka_port) == (7100, 7001)


def test_missing_and_broken_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("web_port = = 1")
    with pytest.raises(ConfigError, match=f"{broken} is not valid TOML"):
        load_settings(broken)


def test_secrets_are_masked_everywhere() -> None:
    settings = Settings(kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="PLAIN",
                        kafka_sasl_username="svc", kafka_sasl_password=SecretStr("hunter2"),
                        kafka_ssl_key_password=SecretStr("swordfish"),
                        kafka_ssl_certfile=Path("client.pem"))  # fmt: skip
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings.masked())
    assert settings.masked()["kafka_sasl_password"] == "**********"
    assert "swordfish" not in repr(settings)
    assert "swordfish" not in str(settings.masked())


def test_the_stream_buffer_reaches_faust() -> None:
    # The default is the worker's own (Faust's 4,096 left it idle on a backlog).
    assert create_app(Settings(store="memory")).faust.conf.stream_buffer_maxsize == 65536
    small = create_app(Settings(store="memory", stream_buffer_messages=4096))
    assert small.faust.conf.stream_buffer_maxsize == 4096
    with pytest.raises(ValueError, match="stream_buffer_messages"):
        Settings(stream_buffer_messages=0)
