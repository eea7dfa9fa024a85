"""The local Apache Kafka broker: resolve with Maven, format KRaft storage, start, wait, stop.

A single-node combined broker+controller on 127.0.0.1, its data and log file in
``settings.kafka_data_dir``, the jars cached per version under ``settings.kafka_cache_dir``
(downloaded once from Maven Central with ``deploy/kafka/pom.xml``). The broker runs detached
from the command that started it; ``broker.pid`` in the data folder lets ``down`` and ``status``
find it again, and a stop always waits for the JVM to exit (SIGKILL after a grace period).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from streamer.errors import BrokerError, ConfigError, MissingToolError, PortInUseError
from streamer.kafka_io import metadata_ready, run_sync
from streamer.resources import deploy_dir
from streamer.settings import Settings

__all__ = ["BROKER_USER", "BrokerStatus", "LocalKafka"]

log = logging.getLogger(__name__)

_READY_POLL_SECONDS = 0.5
_STOP_GRACE_SECONDS = 30.0


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None
    bootstrap: str
    data_dir: Path
    version: str
    log_file: Path
    security: str = "PLAINTEXT"

    def describe(self) -> str:
        if not self.running:
            return f"local Kafka {self.version} is not running (data {self.data_dir})"
        tls = f", CA {self.data_dir / 'tls' / 'ca.pem'}" if self.security == "SASL_SSL" else ""
        return (
            f"local Kafka {self.version} running at {self.bootstrap} ({self.security}{tls}; "
            f"pid {self.pid}, data {self.data_dir}, log {self.log_file})"
        )


def _require_tool(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MissingToolError(f"`{name}` was not found on PATH: {hint}")
    return path


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not running; only our own children can be zombies and we reap them in stop().
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _new_cluster_id() -> str:
    # Kafka's Uuid.toString(): URL-safe base64 of 16 random bytes, no padding; it must not
    # start with '-' (the CLI would read it as an option).
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


# The broker's own principal: it logs in to its controller listener (SASL PLAIN) and to its
# SASL_SSL listener (SCRAM, inter-broker) as this super user, with a password of its own.
BROKER_USER = "streamer-broker"
_SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
_AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"


def _scram_safe(password: str) -> bool:
    # kafka-storage's --add-scram value is `MECH=[name=...,password=...]`: no quoting.
    return bool(password) and not any(char in password for char in ',]["\\ =')


class LocalKafka:
    """Manage one local single-node KRaft broker described by ``settings``.

    ``kafka_security_protocol`` picks its client listener: PLAINTEXT (the default), or SASL_SSL
    with a throwaway CA and certificate (``tls/`` in the data folder), SCRAM users created when
    the storage is formatted (``kafka_sasl_username`` as super user, plus ``scram_users``), and
    the StandardAuthorizer on: every other user needs ACLs."""

    def __init__(self, settings: Settings, scram_users: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.secured = settings.kafka_security_protocol == "SASL_SSL"
        if settings.kafka_security_protocol not in ("PLAINTEXT", "SASL_SSL"):
            raise ConfigError(
                f"kafka_security_protocol={settings.kafka_security_protocol}: the local broker "
                "serves PLAINTEXT or SASL_SSL; use one of them, or an existing cluster "
                "(STREAMER_KAFKA_BOOTSTRAP)"
            )
        if self.secured and settings.kafka_sasl_mechanism not in _SCRAM_MECHANISMS:
            raise ConfigError(
                f"kafka_sasl_mechanism={settings.kafka_sasl_mechanism}: the local broker's "
                "SASL_SSL listener takes SCRAM-SHA-256 or SCRAM-SHA-512"
            )
        self.scram_users: dict[str, str] = {}
        if self.secured:
            # Settings validation guarantees both for SASL_SSL.
            assert settings.kafka_sasl_username is not None
            assert settings.kafka_sasl_password is not None
            self.scram_users[settings.kafka_sasl_username] = (
                settings.kafka_sasl_password.get_secret_value()
            )
            self.scram_users.update(scram_users or {})
            for user, password in self.scram_users.items():
                if not _scram_safe(password) or not _scram_safe(user):
                    raise ConfigError(
                        f"kafka_sasl_username/kafka_sasl_password of local user {user!r}: the "
                        "local broker takes names and passwords without spaces, quotes, "
                        "backslashes or any of , [ ] ="
                    )
        self.version = settings.kafka_version
        self.data_dir = settings.kafka_data_dir.resolve()
        self.libs_dir = settings.kafka_cache_dir.expanduser().resolve() / self.version / "libs"
        self.pid_file = self.data_dir / "broker.pid"
        self.log_file = self.data_dir / "broker.log"
        self.properties_file = self.data_dir / "server.properties"
        self.log_dirs = self.data_dir / "kraft-logs"
        self.bootstrap = f"127.0.0.1:{settings.kafka_port}"
        self.tls_dir = self.data_dir / "tls"
        self.ca_file = self.tls_dir / "ca.pem"
        self.security_file = self.data_dir / "security"
        self.broker_secret_file = self.data_dir / "broker-secret"

    # --- resolve -------------------------------------------------------------------------
    def resolve(self) -> Path:
        """Download the broker jars for this version once; return the folder that holds them."""
        marker = self.libs_dir / ".complete"
        if marker.exists():
            return self.libs_dir
        _require_tool("java", "install a Java 17+ runtime (Debian: apt-get install openjdk-17-jre)")
        mvn = _require_tool("mvn", "install Apache Maven (Debian: apt-get install maven)")
        pom = deploy_dir() / "kafka" / "pom.xml"
        if not pom.exists():
            raise BrokerError(
                f"{pom} is missing: this streamer installation is incomplete (reinstall it)"
            )
        staging = self.libs_dir.with_name("libs.partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        log.info("resolving Apache Kafka %s from Maven Central into %s", self.version, staging)
        command = [
            mvn, "-q", "-B", "-f", str(pom), f"-Dkafka.version={self.version}",
            "dependency:copy-dependencies", "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            tail = (result.stdout + result.stderr).strip().splitlines()[-5:]
            raise BrokerError(
                f"Maven could not resolve org.apache.kafka:kafka_2.13:{self.version}: "
                + " | ".join(tail)
            )
        if not any(staging.glob("kafka_2.13-*.jar")):
            raise BrokerError(f"Maven finished but no kafka_2.13 jar is in {staging}")
        shutil.rmtree(self.libs_dir, ignore_errors=True)
        staging.rename(self.libs_dir)
        marker.touch()
        return self.libs_dir

    # --- status --------------------------------------------------------------------------
    def _recorded_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if not _pid_alive(pid):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return pid
        # The pid may have been reused by an unrelated process after a reboot.
        return pid if "kafka.Kafka" in cmdline and str(self.data_dir) in cmdline else None

    def status(self) -> BrokerStatus:
        pid = self._recorded_pid()
        return BrokerStatus(
            running=pid is not None,
            pid=pid,
            bootstrap=self.bootstrap,
            data_dir=self.data_dir,
            version=self.version,
            log_file=self.log_file,
            security=self._formatted_for() or self.settings.kafka_security_protocol,
        )

    # --- start ---------------------------------------------------------------------------
    def _broker_secret(self) -> str:
        """The broker's own password (BROKER_USER), made once per data folder."""
        if not self.broker_secret_file.exists():
            descriptor = os.open(self.broker_secret_file, os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_urlsafe(24).replace("-", "x").replace("_", "y"))
        return self.broker_secret_file.read_text().strip()

    def _write_certificates(self) -> None:
        from streamer.tls import write_ca, write_signed_certificate

        if (self.tls_dir / "broker-keystore.pem").exists():
            return
        ca = write_ca(self.tls_dir)
        write_signed_certificate(ca, self.tls_dir, "broker", hosts=("127.0.0.1", "localhost"))

    def _security_lines(self, port: int, controller: int) -> list[str]:
        if not self.secured:
            return [
                f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            ]
        secret = self._broker_secret()
        scram_login = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{BROKER_USER}" password="{secret}";'
        )
        plain_login = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{BROKER_USER}" password="{secret}" user_{BROKER_USER}="{secret}";'
        )
        supers = ";".join(
            f"User:{name}" for name in (BROKER_USER, self.settings.kafka_sasl_username)
        )
        return [
            f"listeners=SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}",
            f"advertised.listeners=SASL_SSL://127.0.0.1:{port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=SASL_SSL",
            "listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SASL_PLAINTEXT",
            # SCRAM users live in the metadata log, which the controller cannot read before it
            # runs: its own listener authenticates with PLAIN against this file instead.
            "sasl.mechanism.controller.protocol=PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
            f"listener.name.controller.plain.sasl.jaas.config={plain_login}",
            "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
            f"listener.name.sasl_ssl.sasl.enabled.mechanisms={','.join(_SCRAM_MECHANISMS)}",
            f"listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={scram_login}",
            f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram_login}",
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={self.tls_dir / 'broker-keystore.pem'}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={self.ca_file}",
            # Clients may present a certificate (mutual TLS); SASL still names the principal.
            "ssl.client.auth=requested",
            f"authorizer.class.name={_AUTHORIZER}",
            f"super.users={supers}",
            "allow.everyone.if.no.acl.found=false",
        ]

    def _write_properties(self) -> None:
        port = self.settings.kafka_port
        controller = self.settings.kafka_controller_port
        partitions = self.settings.topic_partitions
        # The file may hold the broker's own password: readable by the owner only.
        descriptor = os.open(self.properties_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(descriptor)
        self.properties_file.write_text(
            "\n".join(
                [
                    "# Written by streamer kafka up; edits are overwritten.",
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{controller}",
                    *self._security_lines(port, controller),
                    f"log.dirs={self.log_dirs}",
                    f"num.partitions={partitions}",
                    "auto.create.topics.enable=true",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=4",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "share.coordinator.state.topic.replication.factor=1",
                    "share.coordinator.state.topic.min.isr=1",
                    # A fresh single-node group should not wait 3 s before its first rebalance.
                    "group.initial.rebalance.delay.ms=0",
                    "log.retention.hours=168",
                    "",
                ]
            )
        )

    def _java_command(self, main_class: str, *args: str) -> list[str]:
        java = _require_tool(
            "java", "install a Java 17+ runtime (Debian: apt-get install openjdk-17-jre)"
        )
        log4j = deploy_dir() / "kafka" / "log4j2.properties"
        return [
            java,
            f"-Xmx{self.settings.kafka_heap}",
            f"-Xms{self.settings.kafka_heap}",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}",
            f"-Dkafka.logs.dir={self.data_dir}",
            "-cp",
            f"{self.libs_dir}/*",
            main_class,
            *args,
        ]

    def _formatted_for(self) -> str | None:
        """The listener protocol the data folder was formatted for; None before a format."""
        if not (self.log_dirs / "meta.properties").exists():
            return None
        if not self.security_file.exists():  # formatted before SASL_SSL existed
            return "PLAINTEXT"
        return self.security_file.read_text().strip()

    def _check_formatted_for(self) -> None:
        """Refuse data formatted for the other listener (users exist from format time only)."""
        wanted = self.settings.kafka_security_protocol
        formatted_for = self._formatted_for()
        if formatted_for is not None and formatted_for != wanted:
            raise BrokerError(
                f"the local broker data in {self.data_dir} was made for {formatted_for}, "
                f"not kafka_security_protocol={wanted} (its users are created once, at "
                "format time): run `streamer kafka reset` first"
            )

    def _format(self) -> None:
        wanted = self.settings.kafka_security_protocol
        if (self.log_dirs / "meta.properties").exists():
            return
        self.log_dirs.mkdir(parents=True, exist_ok=True)
        users: list[str] = []
        secrets_used: list[str] = []
        if self.secured:
            accounts = {BROKER_USER: self._broker_secret(), **self.scram_users}
            for user, password in accounts.items():
                secrets_used.append(password)
                for mechanism in _SCRAM_MECHANISMS:
                    users += ["--add-scram", f"{mechanism}=[name={user},password={password}]"]
        command = self._java_command(
            "kafka.tools.StorageTool",
            "format",
            "--ignore-formatted",
            "-t",
            _new_cluster_id(),
            "-c",
            str(self.properties_file),
            *users,
        )
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip().replace("\n", " | ")
            for secret in secrets_used:  # the tool may echo its arguments
                output = output.replace(secret, "**********")
            raise BrokerError(f"formatting KRaft storage in {self.log_dirs} failed: {output}")
        self.security_file.write_text(f"{wanted}\n")

    def up(self) -> tuple[BrokerStatus, bool]:
        """Start the broker unless it runs; return its status and whether this call started it."""
        current = self.status()
        if current.running:
            return current, False
        for port in (self.settings.kafka_port, self.settings.kafka_controller_port):
            if not _port_free(port):
                raise PortInUseError(
                    f"port 127.0.0.1:{port} is already in use by another process; "
                    "stop it or choose another port (STREAMER_KAFKA_PORT / "
                    "STREAMER_KAFKA_CONTROLLER_PORT)"
                )
        self.resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._check_formatted_for()
        if self.secured:
            self._write_certificates()
        self._write_properties()
        self._format()
        command = self._java_command("kafka.Kafka", str(self.properties_file))
        with self.log_file.open("ab") as log_handle:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # survives the CLI; stopped by `kafka down`
            )
        self.pid_file.write_text(f"{process.pid}\n")
        log.info("started Kafka %s (pid %d), waiting for it to answer", self.version, process.pid)
        self._wait_ready(process)
        return self.status(), True

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self.settings.kafka_start_timeout_seconds
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise BrokerError(
                    f"Kafka exited with code {process.returncode} while starting; "
                    f"last lines of {self.log_file}: {self._log_tail()}"
                )
            if run_sync(metadata_ready(self.client_settings(), timeout=2.0)):
                return
            time.sleep(_READY_POLL_SECONDS)
        self.down()
        raise BrokerError(
            f"Kafka did not answer metadata requests within "
            f"{self.settings.kafka_start_timeout_seconds:.0f}s; see {self.log_file}"
        )

    def client_settings(self) -> Settings:
        """The settings of a client of this broker as its super user (PLAINTEXT: anyone)."""
        update: dict[str, object] = {"kafka_bootstrap": self.bootstrap}
        if self.secured:
            update["kafka_ssl_cafile"] = self.ca_file
        return self.settings.model_copy(update=update)

    def _log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_file.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:])

    # --- stop ----------------------------------------------------------------------------
    def down(self) -> bool:
        """Stop the broker; return False when it was not running."""
        pid = self._recorded_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.killpg(pid, signal.SIGTERM)  # the JVM leads its own session (start_new_session)
        deadline = time.monotonic() + _STOP_GRACE_SECONDS
        while time.monotonic() < deadline and _pid_alive(pid):
            self._reap(pid)
            time.sleep(0.2)
        if _pid_alive(pid):
            log.warning(
                "Kafka (pid %d) ignored SIGTERM for %.0fs; killing it", pid, _STOP_GRACE_SECONDS
            )
            os.killpg(pid, signal.SIGKILL)
            while _pid_alive(pid):
                self._reap(pid)
                time.sleep(0.1)
        self._reap(pid)
        self.pid_file.unlink(missing_ok=True)
        return True

    @staticmethod
    def _reap(pid: int) -> None:
        # When this process started the broker (tests), collect the exit status so the
        # child does not linger as a zombie.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)

    def destroy(self) -> None:
        """Stop the broker and delete its data folder (tests, `kafka reset`)."""
        self.down()
        shutil.rmtree(self.data_dir, ignore_errors=True)
