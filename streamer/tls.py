"""Throwaway TLS material for the local broker: a CA and a certificate it signs.

Written once per broker data folder by ``streamer kafka up`` (and the test fixtures) when the
broker serves SSL or SASL_SSL; clients trust ``ca.pem``. Never meant for a real cluster: the CA key
sits next to the broker's, both unencrypted, readable by the owner only.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertificateFiles", "write_ca", "write_signed_certificate"]

_VALID_DAYS = 30


@dataclass(frozen=True)
class CertificateFiles:
    certificate: Path  # PEM certificate
    key: Path  # PEM private key (PKCS#8, unencrypted)
    chain: Path  # key then certificate in one file: Kafka's PEM keystore format


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


def _key_pem(key: rsa.RSAPrivateKey, password: str | None = None) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,  # Kafka's PEM keystore reads PKCS#8 only
        serialization.NoEncryption()
        if password is None
        else serialization.BestAvailableEncryption(password.encode()),
    )


def _write(
    name: str,
    folder: Path,
    cert: x509.Certificate,
    key: rsa.RSAPrivateKey,
    key_password: str | None = None,
) -> CertificateFiles:
    files = CertificateFiles(
        certificate=folder / f"{name}.pem",
        key=folder / f"{name}-key.pem",
        chain=folder / f"{name}-keystore.pem",
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = _key_pem(key, key_password)
    _write_private(files.certificate, cert_pem)
    _write_private(files.key, key_pem)
    _write_private(files.chain, key_pem + cert_pem)
    return files


def _validity() -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    return now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=_VALID_DAYS)


def write_ca(folder: Path, common_name: str = "streamer local CA") -> CertificateFiles:
    """A self-signed CA: ``{folder}/ca.pem`` and its key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    not_before, not_after = _validity()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _write("ca", folder, cert, key)


def write_signed_certificate(
    ca: CertificateFiles,
    folder: Path,
    name: str,
    hosts: tuple[str, ...],
    key_password: str | None = None,
) -> CertificateFiles:
    """A certificate for ``hosts`` (IP addresses or DNS names) signed by ``ca``, usable by a
    server and as a client certificate (mutual TLS); its key encrypted with ``key_password``
    when one is given."""
    ca_cert = x509.load_pem_x509_certificate(ca.certificate.read_bytes())
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    alt_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt_names.append(x509.DNSName(host))
    not_before, not_after = _validity()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return _write(name, folder, cert, key, key_password)
