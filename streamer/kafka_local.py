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
from typing import TYPE_CHECKING

from streamer.errors import BrokerError, ConfigError, MissingToolError, PortInUseError
from streamer.kafka_io import metadata_ready, run_sync
from streamer.resources import deploy_dir
from streamer.settings import Settings

if TYPE_CHECKING:
    from streamer.tls import CertificateFiles

__all__ = ["ADMIN_CERTIFICATE_NAME", "BROKER_USER", "BrokerStatus", "LocalKafka"]

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
        tls = f", CA {self.data_dir / 'tls' / 'ca.pem'}" if self.security.endswith("SSL") else ""
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
# SASL listener (SCRAM, inter-broker) as this super user, with a password of its own.
BROKER_USER = "streamer-broker"
# The super user of an SSL listener, named by its client certificate (``tls/<name>.pem``).
ADMIN_CERTIFICATE_NAME = "streamer-admin"
_SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")
_SASL_MECHANISMS = ("PLAIN", *_SCRAM_MECHANISMS)
# The broker's own certificate (inter-broker over SSL) names this principal.
_BROKER_CERTIFICATE_NAME = "broker"
_AUTHORIZER = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"


def _plain_login(secret: str, users: Mapping[str, str]) -> str:
    """The PLAIN login module of a listener: the broker logs in as BROKER_USER with
    ``secret``, and each of ``users`` may log in with its password."""
    accounts = {BROKER_USER: secret, **users}
    return (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="{BROKER_USER}" password="{secret}"'
        + "".join(f' user_{name}="{password}"' for name, password in accounts.items())
        + ";"
    )


def _scram_safe(password: str) -> bool:
    # kafka-storage's --add-scram value is `MECH=[name=...,password=...]`: no quoting.
    return bool(password) and not any(char in password for char in ',]["\\ =')


class LocalKafka:
    """Manage one local single-node KRaft broker described by ``settings``.

    ``kafka_security_protocol`` picks its client listener: PLAINTEXT (the default), or one
    secured listener with the StandardAuthorizer on (every other user needs ACLs):

    - SASL_SSL and SASL_PLAINTEXT: users made when the storage is formatted
      (``kafka_sasl_username`` as super user, plus ``users``), each logging in with PLAIN,
      SCRAM-SHA-256 or SCRAM-SHA-512;
    - SSL: TLS only, and the broker *requires* a client certificate from its CA
      (``ssl.client.auth=required``); the principal is the certificate's common name, and
      ``tls/streamer-admin.pem`` (with its key) is the super user's.

    The TLS listeners use a throwaway CA and certificate (``tls/`` in the data folder)."""

    def __init__(self, settings: Settings, users: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.protocol = settings.kafka_security_protocol
        self.secured = self.protocol != "PLAINTEXT"
        self.uses_sasl = self.protocol.startswith("SASL_")
        self.uses_tls = self.protocol.endswith("SSL")
        self.sasl_users: dict[str, str] = {}
        if self.uses_sasl:
            # Settings validation guarantees both for the SASL protocols.
            assert settings.kafka_sasl_username is not None
            assert settings.kafka_sasl_password is not None
            self.sasl_users[settings.kafka_sasl_username] = (
                settings.kafka_sasl_password.get_secret_value()
            )
            self.sasl_users.update(users or {})
            for user, password in self.sasl_users.items():
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
        self.broker_keystore = self.tls_dir / f"{_BROKER_CERTIFICATE_NAME}-keystore.pem"
        self.admin_certificate = self.tls_dir / f"{ADMIN_CERTIFICATE_NAME}.pem"
        self.admin_key = self.tls_dir / f"{ADMIN_CERTIFICATE_NAME}-key.pem"
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

    def certificate_authority(self) -> CertificateFiles:
        """The throwaway CA of the TLS listeners (written by :meth:`up`), to sign client
        certificates with."""
        from streamer.tls import CertificateFiles

        return CertificateFiles(
            certificate=self.ca_file, key=self.tls_dir / "ca-key.pem", chain=self.ca_file
        )

    def _write_certificates(self) -> None:
        from streamer.tls import write_ca, write_signed_certificate

        if not self.broker_keystore.exists():
            ca = write_ca(self.tls_dir)
            write_signed_certificate(
                ca, self.tls_dir, _BROKER_CERTIFICATE_NAME, hosts=("127.0.0.1", "localhost")
            )
        if self.protocol == "SSL" and not self.admin_certificate.exists():
            write_signed_certificate(
                self.certificate_authority(),
                self.tls_dir,
                ADMIN_CERTIFICATE_NAME,
                hosts=(ADMIN_CERTIFICATE_NAME,),
            )

    def _security_lines(self, port: int, controller: int) -> list[str]:
        if not self.secured:
            return [
                f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            ]
        protocol, listener = self.protocol, self.protocol.lower()
        secret = self._broker_secret()
        supers = [BROKER_USER]
        lines = [
            f"listeners={protocol}://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}",
            f"advertised.listeners={protocol}://127.0.0.1:{port}",
            "controller.listener.names=CONTROLLER",
            f"inter.broker.listener.name={protocol}",
            f"listener.security.protocol.map={protocol}:{protocol},CONTROLLER:SASL_PLAINTEXT",
            # SCRAM users live in the metadata log, which the controller cannot read before it
            # runs: its own listener authenticates with PLAIN against this file instead.
            "sasl.mechanism.controller.protocol=PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
            f"listener.name.controller.plain.sasl.jaas.config={_plain_login(secret, {})}",
        ]
        if self.uses_sasl:
            assert self.settings.kafka_sasl_username is not None  # (checked in __init__)
            supers.append(self.settings.kafka_sasl_username)
            scram_login = (
                "org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="{BROKER_USER}" password="{secret}";'
            )
            lines += [
                "sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512",
                f"listener.name.{listener}.sasl.enabled.mechanisms={','.join(_SASL_MECHANISMS)}",
                f"listener.name.{listener}.scram-sha-256.sasl.jaas.config={scram_login}",
                f"listener.name.{listener}.scram-sha-512.sasl.jaas.config={scram_login}",
                # PLAIN checks passwords against this file (readable by the owner only).
                f"listener.name.{listener}.plain.sasl.jaas.config="
                + _plain_login(secret, self.sasl_users),
            ]
        if self.uses_tls:
            lines += [
                "ssl.keystore.type=PEM",
                f"ssl.keystore.location={self.broker_keystore}",
                "ssl.truststore.type=PEM",
                f"ssl.truststore.location={self.ca_file}",
            ]
        if self.protocol == "SSL":
            # No SASL: the client certificate is the login. Its common name is the principal
            # (User:worker, as SASL would name it), and the broker's own is a super user.
            supers += [_BROKER_CERTIFICATE_NAME, ADMIN_CERTIFICATE_NAME]
            lines += [
                "ssl.client.auth=required",
                "ssl.principal.mapping.rules=RULE:^CN=([^,]+)$/$1/,DEFAULT",
            ]
        elif self.uses_tls:
            # Clients may present a certificate (mutual TLS); SASL still names the principal.
            lines.append("ssl.client.auth=requested")
        return [
            *lines,
            f"authorizer.class.name={_AUTHORIZER}",
            f"super.users={';'.join(f'User:{name}' for name in supers)}",
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
        if self.uses_sasl:
            accounts = {BROKER_USER: self._broker_secret(), **self.sasl_users}
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
        if self.uses_tls:
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
        if self.uses_tls:
            update["kafka_ssl_cafile"] = self.ca_file
        if self.protocol == "SSL":
            update["kafka_ssl_certfile"] = self.admin_certificate
            update["kafka_ssl_keyfile"] = self.admin_key
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
