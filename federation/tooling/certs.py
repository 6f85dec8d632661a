"""A small certificate authority for local and test federations (the ``cryptography`` package).

:func:`create_ca` makes a self-signed CA; :meth:`CertAuthority.issue` signs a certificate
for a server (its host names and IP addresses in the subject alternative names) and/or a
client (its subject is the mTLS principal, e.g. ``CN=app,OU=fedkafka-local``). Each
certificate is written as PEM files that every client in the tests and Kafka itself read:

* ``NAME.pem`` — the certificate followed by the CA's (the chain);
* ``NAME.key`` — its private key, unencrypted PKCS#8, mode 0600;
* ``NAME.keystore.pem`` — key and chain in one file, a Kafka PEM keystore
  (``ssl.keystore.type=PEM``, KIP-651), mode 0600.

Not a production PKI: keys are unencrypted and certificates live a year.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CertAuthority", "IssuedCert", "create_ca", "load_ca"]

VALID_DAYS = 365


@dataclass(frozen=True, slots=True)
class IssuedCert:
    cert: Path  #: certificate + CA chain (PEM)
    key: Path  #: PKCS#8 private key (PEM, unencrypted)
    keystore: Path  #: key + chain in one file (a Kafka PEM keystore)
    subject: str  #: RFC 4514 / Kafka's principal form, e.g. "CN=app,OU=fedkafka-local"


def _key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))


def _cert_pem(cert: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _name(common_name: str, units: Iterable[str] = (), organization: str | None = None
          ) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    attrs = []
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    attrs += [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, u) for u in units]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


class CertAuthority:
    """A CA whose key and certificate are in memory (and in ``folder``)."""

    def __init__(self, folder: Path, key: Any, cert: Any) -> None:
        self.folder = folder
        self.key = key
        self.cert = cert

    @property
    def ca_path(self) -> Path:
        return self.folder / "ca.pem"

    def issue(self, name: str, common_name: str, *, units: Iterable[str] = (),
              organization: str | None = None, hosts: Iterable[str] = (),
              server: bool = True, client: bool = True) -> IssuedCert:
        """Sign a certificate for ``common_name`` and write ``NAME.pem/.key/.keystore.pem``.

        :param hosts: DNS names and IP addresses for the subject alternative names.
        """
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import ExtendedKeyUsageOID

        key = _key()
        now = datetime.datetime.now(datetime.UTC)
        subject = _name(common_name, units, organization)
        builder = (x509.CertificateBuilder().subject_name(subject)
                   .issuer_name(self.cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True))
        alt: list[x509.GeneralName] = []
        for h in hosts:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                alt.append(x509.DNSName(h))
        if alt:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + (
            [ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        chain = _cert_pem(cert) + _cert_pem(self.cert)
        paths = IssuedCert(cert=self.folder / f"{name}.pem", key=self.folder / f"{name}.key",
                           keystore=self.folder / f"{name}.keystore.pem",
                           subject=subject.rfc4514_string())
        paths.cert.write_bytes(chain)
        _write_private(paths.key, _key_pem(key))
        _write_private(paths.keystore, _key_pem(key) + chain)
        return paths


def create_ca(folder: Path, common_name: str = "fedkafka local CA") -> CertAuthority:
    """A new self-signed CA in ``folder`` (``ca.pem``, ``ca.key`` 0600)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    folder.mkdir(parents=True, exist_ok=True)
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    name = _name(common_name, organization="fedkafka")
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    (folder / "ca.pem").write_bytes(_cert_pem(cert))
    _write_private(folder / "ca.key", _key_pem(key))
    return CertAuthority(folder, key, cert)


def load_ca(folder: Path) -> CertAuthority:
    """The CA :func:`create_ca` wrote in ``folder`` (to issue more certificates)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
    key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), None)
    return CertAuthority(folder, key, cert)
