"""The gateway reaches the database with the TLS its catalog connection asks for, and never sends a cleartext
password over an unencrypted connection.

The local PostgreSQL runs with TLS (scripts/services.sh turns it on with a certificate for 127.0.0.1 from a
throw-away CA in /var/lib/postgresql/amber-tls). Members of the group `amber_cleartext` log in with a cleartext
password (hba method `password`), which is how a server asks for one.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from amber.core.clock import FrozenClock
from amber.gateway.tls import self_signed, upstream_tls
from tests.conftest import CATALOG, POLICIES, Amber, connect_as
from tests.gateway.conftest import gateway_credential, running

CA = Path("/var/lib/postgresql/amber-tls/ca.crt")


@contextmanager
def amber_with(
    state_url: str,
    tmp_path: Path,
    clock: FrozenClock,
    target_db: str,
    monkeypatch: pytest.MonkeyPatch,
    *,
    query: str,
    group: str = "amber_grantees",
) -> Iterator[Amber]:
    """amber whose catalog reaches the target database with `query` (sslmode, ...) and this grantee group."""
    url = f"postgresql://postgres@127.0.0.1:5432/{target_db}"
    monkeypatch.setenv("AMBER_TEST_TLS_URL", f"{url}?{query}")
    catalog = tmp_path / "amber.yaml"
    catalog.write_text(
        textwrap.dedent(CATALOG)
        .replace("env:AMBER_TEST_TARGET_URL", "env:AMBER_TEST_TLS_URL")
        .replace("grantee_group: amber_grantees", f"grantee_group: {group}")
    )
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "main.cedar").write_text(POLICIES)
    with running(state_url, catalog, tmp_path, clock, target_db, url, recorder_process=False) as amber:
        yield amber


def upstream_uses_tls(amber: Amber, role: str) -> bool:
    with connect_as(amber.target_url) as admin:
        row = admin.execute(
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.usename = %s",
            (role,),
        ).fetchone()
    assert row is not None
    return bool(row[0])


def test_the_local_database_offers_tls() -> None:
    assert CA.exists(), "scripts/services.sh turns TLS on in the local PostgreSQL"
    with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/postgres?sslmode=verify-full&sslrootcert={CA}") as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone() == (True,)


def test_verify_full_connects_with_a_checked_certificate(
    state_url: str, tmp_path: Path, clock: FrozenClock, target_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    query = f"sslmode=verify-full&sslrootcert={CA}"
    with amber_with(state_url, tmp_path, clock, target_db, monkeypatch, query=query) as amber:
        cred = gateway_credential(amber)
        with psycopg.connect(cred["url"], autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM public.orders").fetchone() == (50,)
            assert upstream_uses_tls(amber, cred["role"])


def test_verify_full_refuses_a_certificate_it_cannot_check(
    state_url: str, tmp_path: Path, clock: FrozenClock, target_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    query = f"sslmode=verify-full&sslrootcert={CA}"
    with amber_with(state_url, tmp_path, clock, target_db, monkeypatch, query=query) as amber:
        cred = gateway_credential(amber)
        # The gateway now trusts another CA than the one that signed the database's certificate.
        other, _ = self_signed(tmp_path / "other-ca")
        wrong = upstream_tls(f"postgresql://x@127.0.0.1/db?sslmode=verify-full&sslrootcert={other}")
        assert amber.rt.gateway is not None
        monkeypatch.setattr(amber.rt.gateway.server, "upstream_tls", lambda _resource: wrong)
        with pytest.raises(psycopg.OperationalError, match=r"amber could not reach the database .*CERTIFICATE_VERIFY"):
            psycopg.connect(cred["url"])


def test_a_cleartext_password_never_goes_over_an_unencrypted_connection(
    state_url: str, tmp_path: Path, clock: FrozenClock, target_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with amber_with(
        state_url, tmp_path, clock, target_db, monkeypatch, query="sslmode=disable", group="amber_cleartext"
    ) as amber:
        cred = gateway_credential(amber)
        with pytest.raises(psycopg.OperationalError, match="amber never sends one"):
            psycopg.connect(cred["url"])
        # With TLS the same server's request for the password is answered, encrypted.
        assert amber.rt.gateway is not None
        tls = upstream_tls(f"postgresql://x@127.0.0.1/db?sslmode=verify-full&sslrootcert={CA}")
        monkeypatch.setattr(amber.rt.gateway.server, "upstream_tls", lambda _resource: tls)
        with psycopg.connect(cred["url"], autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert upstream_uses_tls(amber, cred["role"])


def test_require_insists_on_tls_and_prefer_takes_it() -> None:
    assert upstream_tls("postgresql://x@h/db?sslmode=require").required
    assert not upstream_tls("postgresql://x@h/db").required  # libpq's default, prefer
    assert upstream_tls("postgresql://x@h/db").attempt
    assert not upstream_tls("postgresql://x@h/db?sslmode=disable").attempt
    with pytest.raises(ValueError, match="unknown sslmode"):
        upstream_tls("postgresql://x@h/db?sslmode=maybe")
