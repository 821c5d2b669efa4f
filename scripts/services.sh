#!/usr/bin/env bash
# Makes sure the services the tests talk to are up, and that the local PostgreSQL checks passwords for
# amber's granted roles (VALID UNTIL is only enforced on password logins; these machines trust loopback).
# Idempotent; safe to run on every `make test`.
set -euo pipefail

say() { printf 'services: %s\n' "$*"; }

pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q; }
maria_up() { mariadb-admin --host=127.0.0.1 --port=3306 --user=root ping >/dev/null 2>&1; }

if ! pg_up; then
  say "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi
if command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ]; then
  if ! maria_up; then
    say "starting MariaDB"
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
  fi
fi

for _ in $(seq 1 60); do pg_up && break; sleep 0.5; done
pg_up || { say "PostgreSQL did not come up on 127.0.0.1:5432"; exit 1; }
if [ -x /usr/sbin/mariadbd ]; then
  for _ in $(seq 1 60); do maria_up && break; sleep 0.5; done
  maria_up || say "warning: MariaDB did not come up on 127.0.0.1:3306 (no test needs it yet)"
fi

# The group every amber-granted role joins in tests, and an hba rule that makes its members use passwords.
psql -h 127.0.0.1 -U postgres -d postgres -qAt -v ON_ERROR_STOP=1 <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'amber_grantees') THEN
    CREATE ROLE amber_grantees NOLOGIN;
  END IF;
END $$;
SQL

hba=$(psql -h 127.0.0.1 -U postgres -d postgres -qAt -c 'SHOW hba_file')
rule='host    all    +amber_grantees    127.0.0.1/32    scram-sha-256'
rule6='host    all    +amber_grantees    ::1/128    scram-sha-256'
rulel='local   all    +amber_grantees                    scram-sha-256'
# prepend_hba GROUP COMMENT RULE...: put RULEs for +GROUP ahead of every other rule (once) and reload.
prepend_hba() {
  local group=$1 comment=$2
  shift 2
  if [ -w "$hba" ] && ! grep -q "+$group" "$hba"; then
    say "adding rules for +$group ahead of the trust rules in $hba"
    tmp=$(mktemp)
    { printf '# %s\n' "$comment"; printf '%s\n' "$@"; cat "$hba"; } >"$tmp"
    cat "$tmp" >"$hba"
    rm -f "$tmp"
    psql -h 127.0.0.1 -U postgres -d postgres -qAt -c 'SELECT pg_reload_conf()' >/dev/null
  elif ! grep -q "+$group" "$hba" 2>/dev/null; then
    say "warning: cannot edit $hba; tests that need the rules for +$group will fail"
  fi
}
prepend_hba amber_grantees "amber: granted roles must log in with a password" "$rulel" "$rule" "$rule6"

# A group whose members log in with a cleartext password (hba method `password`): the gateway must never send
# one over an unencrypted connection (tests/gateway/test_upstream_tls.py).
psql -h 127.0.0.1 -U postgres -d postgres -qAt -v ON_ERROR_STOP=1 <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'amber_cleartext') THEN
    CREATE ROLE amber_cleartext NOLOGIN;
  END IF;
END $$;
SQL
prepend_hba amber_cleartext "amber tests: a group that logs in with cleartext passwords" \
  'host    all    +amber_cleartext    127.0.0.1/32    password'

# TLS on the local PostgreSQL, with a certificate for 127.0.0.1/localhost from a throw-away CA whose certificate
# the tests read (the gateway's upstream TLS with sslmode=verify-full: tests/gateway/test_upstream_tls.py).
tls_dir=/var/lib/postgresql/amber-tls
if [ "$(psql -h 127.0.0.1 -U postgres -d postgres -qAt -c 'SHOW ssl')" != on ] || [ ! -f "$tls_dir/ca.crt" ]; then
  if [ "$(id -u)" = 0 ] && command -v openssl >/dev/null 2>&1; then
    say "turning TLS on in the local PostgreSQL (certificates in $tls_dir)"
    mkdir -p "$tls_dir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 -subj "/CN=amber test CA" \
      -keyout "$tls_dir/ca.key" -out "$tls_dir/ca.crt" >/dev/null 2>&1
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
      -keyout "$tls_dir/server.key" -out "$tls_dir/server.csr" >/dev/null 2>&1
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$tls_dir/san.ext"
    openssl x509 -req -in "$tls_dir/server.csr" -CA "$tls_dir/ca.crt" -CAkey "$tls_dir/ca.key" -CAcreateserial \
      -days 3650 -extfile "$tls_dir/san.ext" -out "$tls_dir/server.crt" >/dev/null 2>&1
    chown -R postgres:postgres "$tls_dir"
    chmod 600 "$tls_dir/server.key" "$tls_dir/ca.key"
    chmod 644 "$tls_dir/ca.crt" "$tls_dir/server.crt"
    psql -h 127.0.0.1 -U postgres -d postgres -qAt -v ON_ERROR_STOP=1 \
      -c "ALTER SYSTEM SET ssl_cert_file = '$tls_dir/server.crt'" \
      -c "ALTER SYSTEM SET ssl_key_file = '$tls_dir/server.key'" \
      -c "ALTER SYSTEM SET ssl = on" \
      -c "SELECT pg_reload_conf()" >/dev/null
    for _ in $(seq 1 20); do
      [ "$(psql -h 127.0.0.1 -U postgres -d postgres -qAt -c 'SHOW ssl')" = on ] && break
      sleep 0.25
    done
  else
    say "warning: cannot turn TLS on in the local PostgreSQL (needs root and openssl); upstream TLS tests will fail"
  fi
fi
# apt_install WHAT PACKAGE...: install Debian packages (as root) or say which tests will fail without them.
apt_install() {
  local what=$1
  shift
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing $*"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 \
      || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@" >/dev/null; } \
      || say "warning: could not install $*; $what will fail"
  else
    say "warning: $* missing (apt-get install as root); $what will fail"
  fi
}

# The PostgreSQL JDBC driver, for the gateway's JDBC client test (Java itself comes with the machine image).
[ -f /usr/share/java/postgresql.jar ] || apt_install "the JDBC gateway test" libpostgresql-jdbc-java

# pg_cron (cuts direct sessions at expiry while amber is down) and pgaudit (records direct sessions), both
# loaded at server start (pg_cron keeps its jobs in database `postgres`, its default): tests/provisioners. Restarting PostgreSQL once here is why this runs before any test.
pg_major=$(ls /etc/postgresql | head -1)
pg_ext=/usr/share/postgresql/$pg_major/extension
[ -f "$pg_ext/pg_cron.control" ] && [ -f "$pg_ext/pgaudit.control" ] \
  || apt_install "the pg_cron and pgaudit tests" "postgresql-$pg_major-cron" "postgresql-$pg_major-pgaudit"
preload=$(psql -h 127.0.0.1 -U postgres -d postgres -qAt -c 'SHOW shared_preload_libraries')
if [ -f "$pg_ext/pg_cron.control" ] && [ -f "$pg_ext/pgaudit.control" ] \
  && ! { [[ ",${preload// /}," == *,pg_cron,* ]] && [[ ",${preload// /}," == *,pgaudit,* ]]; }; then
  if [ "$(id -u)" = 0 ]; then
    say "loading pg_cron and pgaudit in the local PostgreSQL (restarts it once)"
    # Keep the libraries already loaded; a list setting takes one quoted literal per library.
    libs=""
    for lib in ${preload//,/ } pg_cron pgaudit; do
      [[ ",$libs," == *",'$lib',"* ]] || libs="${libs:+$libs,}'$lib'"
    done
    psql -h 127.0.0.1 -U postgres -d postgres -qAt -v ON_ERROR_STOP=1 \
      -c "ALTER SYSTEM SET shared_preload_libraries = $libs" >/dev/null
    pg_ctlcluster --skip-systemctl-redirect "$pg_major" main restart
    for _ in $(seq 1 60); do pg_up && break; sleep 0.5; done
    pg_up || { say "PostgreSQL did not come back after loading pg_cron"; exit 1; }
  else
    say "warning: cannot load pg_cron/pgaudit (needs root); the pg_cron and pgaudit tests will fail"
  fi
fi
psql -h 127.0.0.1 -U postgres -d postgres -qAt -c 'CREATE EXTENSION IF NOT EXISTS pg_cron' >/dev/null 2>&1 \
  || say "warning: pg_cron is not loaded; the pg_cron tests will fail"

# Go and golang.org/x/mod (sumdb/note, sumdb/tlog): an independent verifier run against our ledger exports.
{ command -v go >/dev/null 2>&1 && [ -d /usr/share/gocode/src/golang.org/x/mod/sumdb/note ]; } \
  || apt_install "the Go cross-check of the ledger verifier" golang-go golang-golang-x-mod-dev
say "ready"
