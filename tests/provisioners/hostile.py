"""A hostile target: everything a careless or malicious database owner leaves for a read-only role to write with.

Built on top of the `target_db` seed (schemas app, vault, table public.notes) by `make_hostile(target_db)`:
- `public.add_order(int, text)`: SECURITY DEFINER, owned by the superuser, inserts into app.orders; EXECUTE
  for PUBLIC (PostgreSQL's default for a new function);
- `public.log_note(text)`: a SECURITY DEFINER procedure writing public.notes, also PUBLIC's;
- `vault.rotate()`: a SECURITY DEFINER function in a schema no grant role may use (reported all the same);
- dblink and postgres_fdw installed (their functions PUBLIC's by default), dblink_connect_u (a SECURITY
  DEFINER function dblink ships for superusers only: it connects without a password, as the server's OS
  user) granted to PUBLIC, USAGE on postgres_fdw granted to PUBLIC;
- pg_stat_reset() (shipped for superusers only) granted to PUBLIC;
- foreign servers `dblink_loop` (dblink_fdw) and `pg_loop` (postgres_fdw) pointing back at this database,
  USAGE for PUBLIC, and user mappings for PUBLIC that log in as `writer`, an application role with a
  password that may INSERT into app.orders (it joins the grantee group only so pg_hba asks it for a password,
  which dblink requires of non-superusers);
- CREATE on schema public, USAGE on sequence app.order_ids for PUBLIC (TEMP on the database is PUBLIC's by
  default);
- a large object 4242 owned by the superuser, and lo_compat_privileges on for the database.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from psycopg import sql

from .conftest import GRANTEE_GROUP, TargetDb

LARGE_OBJECT = 4242


@dataclass(frozen=True)
class Hostile:
    target: TargetDb
    writer: str
    writer_password: str


def make_hostile(target: TargetDb) -> Hostile:
    writer = f"amber_hw_{secrets.token_hex(5)}"
    target.roles.append(writer)
    password = "wr_" + secrets.token_hex(12)
    w = sql.Identifier(writer)
    with target.admin() as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                w, sql.Literal(password), sql.Identifier(GRANTEE_GROUP)
            )
        )
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA app TO {0}; GRANT INSERT ON app.orders TO {0}").format(w))
        conn.execute(
            "CREATE FUNCTION public.add_order(id int, item text) RETURNS void LANGUAGE sql SECURITY DEFINER"
            " AS 'INSERT INTO app.orders VALUES (id, item)';"
            "CREATE PROCEDURE public.log_note(n text) LANGUAGE sql SECURITY DEFINER"
            " AS 'INSERT INTO public.notes VALUES (n)';"
            "CREATE FUNCTION vault.rotate() RETURNS void LANGUAGE sql SECURITY DEFINER"
            " AS 'UPDATE vault.keys SET k = md5(k)';"
            "CREATE EXTENSION dblink; CREATE EXTENSION postgres_fdw;"
            "GRANT EXECUTE ON FUNCTION dblink_connect_u(text), dblink_connect_u(text, text) TO PUBLIC;"
            "GRANT EXECUTE ON FUNCTION pg_stat_reset() TO PUBLIC;"
            "GRANT USAGE ON FOREIGN DATA WRAPPER postgres_fdw TO PUBLIC;"
            "GRANT CREATE ON SCHEMA public TO PUBLIC;"
            "GRANT USAGE ON SEQUENCE app.order_ids TO PUBLIC;"
            f"SELECT lo_from_bytea({LARGE_OBJECT}, 'owned by the superuser')"
        )
        options = sql.SQL("OPTIONS (host {}, port {}, dbname {})").format(
            sql.Literal(target.host), sql.Literal(str(target.port)), sql.Literal(target.name)
        )
        mapping = sql.SQL("OPTIONS (user {}, password {})").format(sql.Literal(writer), sql.Literal(password))
        for server, wrapper in (("dblink_loop", "dblink_fdw"), ("pg_loop", "postgres_fdw")):
            s = sql.Identifier(server)
            conn.execute(
                sql.SQL("CREATE SERVER {} FOREIGN DATA WRAPPER {} {}").format(s, sql.Identifier(wrapper), options)
            )
            conn.execute(sql.SQL("CREATE USER MAPPING FOR PUBLIC SERVER {} {}").format(s, mapping))
            conn.execute(sql.SQL("GRANT USAGE ON FOREIGN SERVER {} TO PUBLIC").format(s))
        conn.execute(sql.SQL("ALTER DATABASE {} SET lo_compat_privileges = on").format(sql.Identifier(target.name)))
    return Hostile(target=target, writer=writer, writer_password=password)
