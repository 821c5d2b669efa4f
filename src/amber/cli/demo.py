"""The quickstart demo database: a small `orders` schema the walkthrough reads from."""

from __future__ import annotations

import os

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from amber.core.errors import ConfigError, Unavailable

TABLES = """
CREATE TABLE IF NOT EXISTS public.customers (
    id bigint PRIMARY KEY, name text NOT NULL, email text NOT NULL, country text NOT NULL);
CREATE TABLE IF NOT EXISTS public.orders (
    id bigint PRIMARY KEY, customer_id bigint NOT NULL REFERENCES public.customers(id),
    placed_at timestamptz NOT NULL, total_cents bigint NOT NULL, status text NOT NULL);
CREATE SCHEMA IF NOT EXISTS analytics;
CREATE OR REPLACE VIEW analytics.daily_revenue AS
    SELECT date_trunc('day', placed_at) AS day, sum(total_cents) / 100.0 AS revenue
    FROM public.orders GROUP BY 1;
INSERT INTO public.customers
    SELECT g, 'Customer ' || g, 'customer' || g || '@example.com', (ARRAY['DE','FR','US','JP'])[1 + g % 4]
    FROM generate_series(1, 200) g ON CONFLICT DO NOTHING;
INSERT INTO public.orders
    SELECT g, 1 + g % 200, now() - (g || ' hours')::interval, 500 + (g * 37) % 20000,
           (ARRAY['paid','shipped','refunded'])[1 + g % 3]
    FROM generate_series(1, 2000) g ON CONFLICT DO NOTHING;
"""


def setup() -> str:
    url = os.environ.get("AMBER_DEMO_PG_URL")
    if not url:
        raise ConfigError("AMBER_DEMO_PG_URL is not set (the Makefile sets it for `make run`)")
    params = conninfo_to_dict(url)
    dbname = str(params.get("dbname") or "amber_demo")
    admin = make_conninfo(url, dbname="postgres")
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(TABLES)
            grp = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'amber_grantees'").fetchone()
            if not grp:
                conn.execute("CREATE ROLE amber_grantees NOLOGIN")
    except psycopg.Error as exc:
        host = f"{params.get('host', 'localhost')}:{params.get('port', 5432)}"
        raise Unavailable(f"cannot prepare the demo database {dbname} on {host}: {type(exc).__name__}") from None
    return f"demo database {dbname} is ready (tables public.customers, public.orders; view analytics.daily_revenue)"
