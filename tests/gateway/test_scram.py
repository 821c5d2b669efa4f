"""The SCRAM-SHA-256 server, sans-I/O: RFC vectors, channel binding, downgrades, and malformed input."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from amber.core.crypto import scram_sha256_verifier
from amber.gateway.scram import (
    SCRAM_SHA_256,
    SCRAM_SHA_256_PLUS,
    ScramClient,
    ScramProtocolError,
    ScramServer,
    ScramVerifier,
    mock_verifier,
)
from amber.gateway.tls import tls_server_end_point

# RFC 7677, section 3: user "user", password "pencil".
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_NONCE = "rOprNGfwEbeRWgbNEkqO" + RFC_SERVER_NONCE
RFC_FINAL = f"c=biws,r={RFC_NONCE},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
TOKEN = "amb_gw_TestTokenTestTokenTestTokenTest_abcdef"
BINDING = hashlib.sha256(b"the server certificate").digest()


def rfc_server() -> tuple[ScramServer, str]:
    verifier = scram_sha256_verifier("pencil", salt=RFC_SALT)
    server = ScramServer(verifier, server_nonce=RFC_SERVER_NONCE)
    return server, verifier


def test_rfc_7677_vector() -> None:
    server, verifier = rfc_server()
    first = server.server_first(SCRAM_SHA_256, b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
    assert first == f"r={RFC_NONCE},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".encode()
    server.client_final(RFC_FINAL.encode())
    assert server.proves(verifier)
    assert server.server_final() == b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_verifier_format_and_fresh_salt() -> None:
    one, two = scram_sha256_verifier(TOKEN), scram_sha256_verifier(TOKEN)
    pattern = r"SCRAM-SHA-256\$4096:[A-Za-z0-9+/=]{24}\$[A-Za-z0-9+/=]{44}:[A-Za-z0-9+/=]{44}"
    assert re.fullmatch(pattern, one)
    assert one != two  # random salt
    parsed = ScramVerifier.parse(one)
    assert parsed.iterations == 4096
    assert len(parsed.salt) == 16
    for bad in ("", "md5abc", "SCRAM-SHA-256$4096:c2FsdA==$AAAA:AAAA", one.replace("$4096", "$x")):
        with pytest.raises(ValueError, match=r"not a SCRAM-SHA-256 verifier|invalid base64"):
            ScramVerifier.parse(bad)


def test_amber_client_logs_in_without_channel_binding_even_when_it_is_offered() -> None:
    verifier = scram_sha256_verifier(TOKEN)
    server = ScramServer(verifier, channel_binding=BINDING)
    assert server.mechanisms == [SCRAM_SHA_256_PLUS, SCRAM_SHA_256]
    client = ScramClient(TOKEN)
    first = server.server_first(SCRAM_SHA_256, client.first_message())
    server.client_final(client.final_message(first))
    assert server.proves(verifier)
    client.verify_final(server.server_final())


def plus_exchange(binding: bytes, password: str = TOKEN, *, header: str = "p=tls-server-end-point,,") -> bytes:
    """A SCRAM-SHA-256-PLUS client's messages (as libpq sends them), against a server bound to BINDING."""
    verifier = scram_sha256_verifier(TOKEN)
    server = ScramServer(verifier, channel_binding=BINDING)
    bare = "n=,r=clientnonce"
    server_first = server.server_first(SCRAM_SHA_256_PLUS, (header + bare).encode()).decode()
    nonce = dict(part.split("=", 1) for part in server_first.split(","))["r"]
    without_proof = f"c={base64.b64encode(header.encode() + binding).decode()},r={nonce}"
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), ScramVerifier.parse(verifier).salt, 4096)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    auth = f"{bare},{server_first},{without_proof}".encode()
    signature = hmac.new(hashlib.sha256(client_key).digest(), auth, hashlib.sha256).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    server.client_final(f"{without_proof},p={base64.b64encode(proof).decode()}".encode())
    if not server.proves(verifier):
        raise AssertionError("wrong proof")
    return server.server_final()


def test_channel_binding_round_trip() -> None:
    assert plus_exchange(BINDING).startswith(b"v=")


def test_channel_binding_to_another_certificate_is_refused() -> None:
    with pytest.raises(ScramProtocolError, match="channel binding does not match"):
        plus_exchange(hashlib.sha256(b"a man in the middle's certificate").digest())


def test_wrong_password_does_not_prove_and_releases_no_signature() -> None:
    with pytest.raises(AssertionError, match="wrong proof"):
        plus_exchange(BINDING, password=TOKEN + "x")
    server, verifier = rfc_server()
    server.server_first(SCRAM_SHA_256, b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
    server.client_final(RFC_FINAL.replace("p=dHz", "p=aHz").encode())
    assert not server.proves(verifier)
    with pytest.raises(ScramProtocolError, match="not verified"):
        server.server_final()


def test_a_token_reissued_during_the_exchange_does_not_prove() -> None:
    server, _ = rfc_server()
    server.server_first(SCRAM_SHA_256, b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
    server.client_final(RFC_FINAL.encode())
    assert not server.proves(scram_sha256_verifier("pencil"))  # same password, new verifier: not this exchange


def test_downgrades_and_mismatched_mechanisms_are_refused() -> None:
    verifier = scram_sha256_verifier(TOKEN)
    cases = [
        (BINDING, SCRAM_SHA_256, b"y,,n=,r=abc", "thinks the server does not"),
        (BINDING, SCRAM_SHA_256, b"p=tls-server-end-point,,n=,r=abc", "not SCRAM-SHA-256-PLUS"),
        (BINDING, SCRAM_SHA_256_PLUS, b"n,,n=,r=abc", "no channel binding"),
        (BINDING, SCRAM_SHA_256_PLUS, b"p=tls-unique,,n=,r=abc", "unsupported SCRAM channel binding type"),
        (None, SCRAM_SHA_256_PLUS, b"p=tls-server-end-point,,n=,r=abc", "was not offered"),
        (None, "SCRAM-SHA-1", b"n,,n=,r=abc", "was not offered"),
        (None, SCRAM_SHA_256, b"n,a=admin,n=,r=abc", "authorization identities"),
    ]
    for binding, mechanism, first, message in cases:
        with pytest.raises(ScramProtocolError, match=message):
            ScramServer(verifier, channel_binding=binding).server_first(mechanism, first)
    # Without TLS binding data, "y" is honest: the client could bind, and the server really cannot.
    assert ScramServer(verifier).server_first(SCRAM_SHA_256, b"y,,n=,r=abc").startswith(b"r=abc")


@pytest.mark.parametrize(
    "first",
    [b"", b"n,,", b"n,,r=abc", b"n,,n=,r=", b"n,,n=,r=abc,m=ext", b"x,,n=,r=abc", b"n,,n=,r=\xff", b"n,,n=,r=a\0b"],
)
def test_malformed_first_messages_are_protocol_errors(first: bytes) -> None:
    server, _ = rfc_server()
    with pytest.raises(ScramProtocolError):
        server.server_first(SCRAM_SHA_256, first)


@pytest.mark.parametrize(
    "final",
    [
        "",
        "c=biws,r=x",
        f"c=biws,r={RFC_NONCE}x,p=AAAA",
        f"c=eSws,r={RFC_NONCE},p=AAAA",
        f"c=biws,r={RFC_NONCE},p=AAAA",
        f"c=biws,r={RFC_NONCE},p=not-base64!",
        f"r={RFC_NONCE},c=biws,p=AAAA",
        f"c=biws,r={RFC_NONCE},m=ext,p=AAAA",
    ],
)
def test_malformed_final_messages_are_protocol_errors(final: str) -> None:
    server, _ = rfc_server()
    server.server_first(SCRAM_SHA_256, b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
    with pytest.raises(ScramProtocolError):
        server.client_final(final.encode())


def test_messages_out_of_order_are_protocol_errors() -> None:
    server, verifier = rfc_server()
    with pytest.raises(ScramProtocolError, match="unexpected SASL response"):
        server.client_final(RFC_FINAL.encode())
    with pytest.raises(ScramProtocolError, match="no SCRAM proof"):
        server.proves(verifier)
    server.server_first(SCRAM_SHA_256, b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
    with pytest.raises(ScramProtocolError, match="unexpected SASL initial response"):
        server.server_first(SCRAM_SHA_256, b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
    server.client_final(RFC_FINAL.encode())
    with pytest.raises(ScramProtocolError, match="unexpected SASL response"):
        server.client_final(RFC_FINAL.encode())


@given(st.binary(max_size=200), st.binary(max_size=200))
def test_any_bytes_give_a_protocol_error_or_a_refusal_never_a_crash(first: bytes, final: bytes) -> None:
    server, verifier = rfc_server()
    try:
        server.server_first(SCRAM_SHA_256, first)
        server.client_final(final)
        assert not server.proves(verifier)
    except ScramProtocolError:
        pass


def test_mock_verifier_is_stable_per_user_and_well_formed() -> None:
    key = b"k" * 32
    assert mock_verifier(key, "grt_a") == mock_verifier(key, "grt_a")
    assert ScramVerifier.parse(mock_verifier(key, "grt_a")).salt != ScramVerifier.parse(mock_verifier(key, "b")).salt


def certificate(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey, hash_: object
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
    )
    return builder.sign(key, hash_)  # type: ignore[arg-type]


def test_tls_server_end_point_follows_rfc_5929() -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    for algorithm in (hashes.SHA256(), hashes.SHA384(), hashes.SHA512()):
        cert = certificate(p256, algorithm)
        der = cert.public_bytes(serialization.Encoding.DER)
        pem = cert.public_bytes(serialization.Encoding.PEM)
        assert tls_server_end_point(pem) == hashlib.new(algorithm.name, der).digest()
    # A chain: the first certificate (the server's own) is the one bound.
    other = certificate(p256, hashes.SHA384()).public_bytes(serialization.Encoding.PEM)
    first = certificate(p256, hashes.SHA256())
    chained = first.public_bytes(serialization.Encoding.PEM) + other
    assert tls_server_end_point(chained) == hashlib.sha256(first.public_bytes(serialization.Encoding.DER)).digest()
    assert (
        tls_server_end_point(
            certificate(ed25519.Ed25519PrivateKey.generate(), None).public_bytes(serialization.Encoding.PEM)
        )
        is None
    )
