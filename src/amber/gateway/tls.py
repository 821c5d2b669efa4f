"""TLS for the gateway: the configured certificate, or a self-signed one generated for local development, and
the certificate's `tls-server-end-point` channel binding data for SCRAM-SHA-256-PLUS."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from psycopg.conninfo import conninfo_to_dict


@dataclass(frozen=True)
class UpstreamTls:
    """How the gateway reaches a resource's database, from the `sslmode` (and `sslrootcert`) of its catalog
    connection, as libpq reads them: `disable`/`allow` plain; `prefer` TLS when offered; `require` TLS without
    checking the certificate; `verify-ca` TLS with a certificate from `sslrootcert` (or the system's CAs);
    `verify-full` that, for the host name connected to."""

    mode: str = "prefer"
    context: ssl.SSLContext | None = field(default=None, compare=False)

    @property
    def attempt(self) -> bool:
        return self.mode in ("prefer", "require", "verify-ca", "verify-full")

    @property
    def required(self) -> bool:
        return self.mode in ("require", "verify-ca", "verify-full")


UPSTREAM_MODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})


def upstream_tls(dsn: str) -> UpstreamTls:
    """The TLS a resource's catalog connection asks for (ValueError for an sslmode libpq does not know)."""
    params = conninfo_to_dict(dsn)
    mode = str(params.get("sslmode") or "prefer")
    if mode not in UPSTREAM_MODES:
        raise ValueError(f"unknown sslmode {mode!r}")
    if not mode.startswith("verify"):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return UpstreamTls(mode, context)
    root = params.get("sslrootcert")
    context = ssl.create_default_context(cafile=None if root in (None, "", "system") else str(root))
    context.check_hostname = mode == "verify-full"
    return UpstreamTls(mode, context)


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def tls_server_end_point(certificate_pem: bytes) -> bytes | None:
    """The `tls-server-end-point` channel binding data of the (first) certificate in `certificate_pem`
    (RFC 5929 4.1): its DER hashed with its signature's hash, SHA-256 instead of MD5 or SHA-1. None where that
    is not well defined (Ed25519/Ed448, RSA-PSS): then SCRAM-SHA-256-PLUS is simply not offered."""
    cert = x509.load_pem_x509_certificate(certificate_pem)
    if cert.signature_algorithm_oid == x509.SignatureAlgorithmOID.RSASSA_PSS:
        return None
    algorithm = cert.signature_hash_algorithm
    if algorithm is None:
        return None
    if isinstance(algorithm, hashes.MD5 | hashes.SHA1):
        algorithm = hashes.SHA256()
    return cert.fingerprint(algorithm)


def signs_itself(certificate_pem: bytes) -> bool:
    """Whether the (first) certificate in `certificate_pem` is self-signed: its issuer is its subject and its
    own key verifies its signature. Such a certificate proves nothing to a client that does not pin it."""
    cert = x509.load_pem_x509_certificate(certificate_pem)
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def self_signed(directory: Path, host: str = "localhost") -> tuple[Path, Path]:
    """A P-256 certificate for localhost/127.0.0.1, made once and kept in `directory` (key 0600)."""
    cert_path, key_path = directory / "gateway-cert.pem", directory / "gateway-key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"amber gateway ({host}, development)")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.DNSName(host), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
