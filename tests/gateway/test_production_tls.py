"""In production the gateway refuses a certificate clients cannot verify, unless the operator opts in."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from amber.core.clock import FrozenClock
from amber.core.errors import ConfigError
from amber.gateway.service import Gateway
from amber.gateway.tls import self_signed, signs_itself


def ca_signed(directory: Path) -> tuple[Path, Path]:
    """A leaf certificate for localhost signed by a throw-away CA."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "amber test CA")])
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "leaf.pem", directory / "leaf-key.pem"
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def gateway(tmp_path: Path, **overrides: Any) -> Gateway:
    arguments: dict[str, Any] = {
        "uow": None,
        "clock": FrozenClock(dt.datetime.now(dt.UTC)),
        "secret_key": b"k" * 32,
        "admin_dsn": lambda _resource: "postgresql://postgres@127.0.0.1:5432/postgres",
        "host": "127.0.0.1",
        "port": 0,
        "state_dir": tmp_path / "state",
        **overrides,
    }
    return Gateway(**arguments)


def test_production_refuses_the_generated_certificate_unless_allowed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a certificate clients can verify"):
        gateway(tmp_path, refuse_self_signed=True)
    assert not (tmp_path / "state" / "gateway-cert.pem").exists()  # refused before anything was made
    gateway(tmp_path, refuse_self_signed=False)  # development, or production with the opt-in


def test_production_refuses_a_configured_self_signed_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path / "mine")
    assert signs_itself(cert.read_bytes())
    with pytest.raises(ConfigError, match="is self-signed"):
        gateway(tmp_path, tls_cert=cert, tls_key=key, refuse_self_signed=True)


def test_production_accepts_a_certificate_from_a_ca(tmp_path: Path) -> None:
    cert, key = ca_signed(tmp_path)
    assert not signs_itself(cert.read_bytes())
    assert gateway(tmp_path, tls_cert=cert, tls_key=key, refuse_self_signed=True).server.tls is not None
