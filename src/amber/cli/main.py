"""The `amber` command. Errors print one clear line and exit non-zero; `--json` prints machine output."""

from __future__ import annotations

import importlib.util
import json
import logging
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import click
import typer

from amber.cli import ledger_cmds, login_cmds
from amber.cli.client import Client, default_url, save_token
from amber.cli.policy_cmds import policy_app, relative_start
from amber.cli.text import echo, escape
from amber.cli.witness_cmds import witness_app
from amber.core.durations import format_duration, parse_duration
from amber.core.errors import AmberError, InvalidInput

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="amber: self-service, time-boxed, read-only access to production.",
)
audit_app = typer.Typer(no_args_is_help=True, help="Verify and read the ledger.")
resource_app = typer.Typer(no_args_is_help=True, help="Inspect and harden catalog resources.")
catalog_app = typer.Typer(no_args_is_help=True, help="Validate catalog files.")
db_app = typer.Typer(no_args_is_help=True, help="amber's own state store.")
demo_app = typer.Typer(no_args_is_help=True, help="The quickstart demo.")
app.add_typer(audit_app, name="audit")
ledger_cmds.register(audit_app)
app.add_typer(resource_app, name="resource")
app.add_typer(catalog_app, name="catalog")
app.add_typer(db_app, name="db")
app.add_typer(demo_app, name="demo")
app.add_typer(policy_app, name="policy")
app.add_typer(witness_app, name="witness")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ProfileOpt = Annotated[str, typer.Option("--profile", envvar="AMBER_PROFILE", help="Credential profile.")]
UrlOpt = Annotated[str | None, typer.Option("--url", help="amber's URL (default $AMBER_URL or the profile's).")]


def _out(data: Any, as_json: bool, human: str) -> None:
    if as_json:
        echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        echo(human)


def _client(profile: str, url: str | None) -> Client:
    return login_cmds.client_for(profile, url)


def _when(value: str | None) -> str:
    if not value:
        return "-"
    at = datetime.fromisoformat(value)
    delta = at - datetime.now(UTC)
    seconds = int(delta.total_seconds())
    rel = f"in {format_duration(delta)}" if seconds > 0 else f"{format_duration(-delta)} ago" if seconds < 0 else "now"
    return f"{at.strftime('%Y-%m-%d %H:%M:%S')}Z ({rel})"


def _print_credential(credential: dict[str, Any]) -> None:
    echo()
    echo("  Connect (shown once; amber keeps no copy of this password):")
    echo(f"    {credential['psql']}")
    echo()


def _describe_request(data: dict[str, Any]) -> str:
    decision = data["decision"]
    lines = [
        f"request {escape(data['id'])}: {escape(data['status'])}  ({escape(data['resource'])}/"
        f"{escape(data['level'])}, requested by {escape(data['requester']['name'])})"
    ]
    lines += [f"  - {escape(reason)}" for reason in decision["reasons"]]
    grant = data.get("grant")
    if grant:
        lines.append(
            f"  grant {escape(grant['id'])}: {escape(grant['status'])}, role {escape(grant['role'])}, "
            f"expires {_when(grant['expires_at'])}"
        )
        if grant.get("last_error"):
            lines.append(f"  provisioning is being retried: {escape(grant['last_error'])}")
    return "\n".join(lines)


# -- server ------------------------------------------------------------------------------------------------


@app.command()
def serve(
    catalog: Annotated[Path | None, typer.Option(help="Catalog file (default $AMBER_CATALOG or amber.yaml).")] = None,
    host: Annotated[str | None, typer.Option(help="Listen address.")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port.")] = None,
) -> None:
    """Run amber: API, worker and dev issuer (if enabled) in one process. SIGHUP (or `amber reload`) reloads the
    catalog, policy and identity settings together; if anything is refused, the running ones stay."""
    import uvicorn

    from amber.api.app import create_app
    from amber.api.runtime import Runtime
    from amber.core.observability import configure_logging
    from amber.core.settings import Settings

    overrides: dict[str, Any] = {}
    if catalog is not None:
        overrides["catalog"] = catalog
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    settings = Settings(**overrides)
    configure_logging(settings.log_level)
    rt = Runtime.build(settings)
    url = settings.resolved_public_url
    echo(
        f"amber is starting on {url}  (AMBER_ENV={settings.env}, "
        f"state: {settings.resolved_database_url.split('://')[0]}, "
        f"catalog: {settings.catalog})"
    )
    for warning in rt.warnings:
        echo(f"WARNING: {warning}")
    echo(f"  API docs: {url}/docs    health: {url}/healthz    metrics: {url}/metrics")
    if rt.gateway is not None:
        echo(f"  PostgreSQL gateway: {settings.gateway_host}:{settings.gateway_port} (TLS; user = grant id)")
    resources = ", ".join(rt.catalog().resources) or "none"
    echo(f"  resources: {resources}")
    if rt.dev_issuer is not None:
        echo("  Next, in another terminal:")
        echo("    .venv/bin/amber login --dev alice --groups engineering,oncall")
        first = next(iter(rt.catalog().resources.values()), None)
        if first is not None:
            level = next(iter(first.levels))
            echo(f"    .venv/bin/amber request {first.name} --level {level} --for 2m --reason 'investigate INC-1234'")
    sys.stdout.flush()

    def reload(_signum: int, _frame: object) -> None:
        try:
            catalog = rt.reload_catalog()
        except AmberError as exc:
            logging.getLogger("amber").error(  # noqa: TRY400 - the message is the whole story; no traceback
                "reload refused; still running the previous catalog, policy and identity settings: %s", exc
            )
        else:
            logging.getLogger("amber").info(
                "reloaded catalog %s (%s), policy %s, identity issuers: %s",
                catalog.path,
                catalog.content_hash[:12],
                rt.catalog.policies().hash[:12],
                ", ".join(issuer.name for issuer in catalog.identity.issuers) or "dev issuer only",
            )

    signal.signal(signal.SIGHUP, reload)
    # uvloop roughly doubles the gateway's throughput (bench/gateway.py); plain asyncio where it is missing.
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    uvicorn.run(create_app(rt), host=settings.host, port=settings.port, log_level="warning", loop=loop)


@app.command()
def reload(profile: ProfileOpt = "default", url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Ask the running amber to reload its catalog, policy and identity settings (admins), as SIGHUP does.
    Anything refused changes nothing, and the error says why."""
    data = _client(profile, url).call("POST", "/v1/reload")
    issuers = ", ".join(data["issuers"]) or "dev issuer only"
    state = "reloaded" if data["changed"] else "unchanged"
    _out(
        data,
        as_json,
        f"{state}: catalog {data['catalog_hash'][:12]}, policy {data['policy_hash'][:12]}, issuers: {issuers}",
    )


# -- identity ----------------------------------------------------------------------------------------------


@app.command()
def login(
    dev: Annotated[str | None, typer.Option("--dev", help="User name at the development issuer.")] = None,
    groups: Annotated[str, typer.Option(help="Comma-separated groups (dev issuer only).")] = "",
    token: Annotated[str | None, typer.Option(help="Store this bearer token from your identity provider.")] = None,
    provider: Annotated[str | None, typer.Option("--provider", help="Identity provider (see /auth/providers).")] = None,
    browser: Annotated[bool, typer.Option("--browser", help="Browser + loopback redirect, not a device code.")] = False,
    open_browser: Annotated[bool, typer.Option("--open/--no-open", help="Open the browser for --browser.")] = True,
    profile: ProfileOpt = "default",
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Sign in and cache a token for this profile (0600 in your config folder)."""
    base = url or default_url()
    client = Client(base, None)
    if dev:
        group_list = [g.strip() for g in groups.split(",") if g.strip()]
        data = client.call("POST", "/dev-issuer/token", {"user": dev, "groups": group_list}, auth=False)
        access_token = data["access_token"]
        echo("WARNING: signed in through the DEVELOPMENT issuer; never use it in production.", file=sys.stderr)
    elif token:
        access_token = token
    else:
        login_cmds.provider_login(
            base, provider, profile=profile, as_json=as_json, browser=browser, open_browser=open_browser
        )
        return
    me = Client(base, access_token).call("GET", "/v1/me")
    path = save_token(profile, base, access_token, me["name"])
    _out(
        me,
        as_json,
        f"signed in as {me['name']} ({me['iss']}), groups: {', '.join(me['groups']) or '-'}\ntoken cached in {path}",
    )


@app.command()
def whoami(profile: ProfileOpt = "default", url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Show who the cached token says you are."""
    me = _client(profile, url).call("GET", "/v1/me")
    _out(me, as_json, f"{me['name']} ({me['iss']} {me['sub']}), groups: {', '.join(me['groups']) or '-'}")


# -- requests ----------------------------------------------------------------------------------------------


@app.command()
def request(
    resource: str,
    level: Annotated[str, typer.Option("--level", "-l", help="Access level, e.g. read-only.")],
    duration: Annotated[str, typer.Option("--for", help="How long, e.g. 30m, 2h.")],
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why you need access (recorded).")],
    wait: Annotated[bool, typer.Option(help="Wait for approval, then print how to connect.")] = False,
    timeout: Annotated[str, typer.Option(help="How long --wait waits.")] = "30m",
    start: Annotated[
        str | None, typer.Option(help="Scheduled access: +2h, or an instant like 2026-12-01T09:00Z.")
    ] = None,
    break_glass: Annotated[
        bool, typer.Option("--break-glass", help="Emergency access: at once if policy allows; owners are told.")
    ] = False,
    profile: ProfileOpt = "default",
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Ask for access. Auto-approved requests print how to connect, once."""
    parse_duration(duration)
    client = _client(profile, url)
    body: dict[str, Any] = {"resource": resource, "level": level, "reason": reason, "duration": duration}
    if start:
        body["start"] = relative_start(start, datetime.now(UTC)).isoformat()
    if break_glass:
        body["break_glass"] = True
    data = client.call("POST", "/v1/requests", body)
    if wait and data["status"] == "pending":
        if not as_json:
            echo(_describe_request(data))
            echo("waiting for approval (Ctrl-C stops waiting; the request stays pending)...")
        deadline = time.monotonic() + parse_duration(timeout).total_seconds()
        while data["status"] == "pending" and time.monotonic() < deadline:
            time.sleep(1)
            data = client.call("GET", f"/v1/requests/{data['id']}")
        grant = data.get("grant")
        while grant and grant["status"] == "issued" and time.monotonic() < deadline:
            time.sleep(0.5)
            grant = client.call("GET", f"/v1/grants/{grant['id']}")
            data["grant"] = grant
        if grant and grant["status"] == "active" and not grant["credential_shown"]:
            data["credential"] = client.call("POST", f"/v1/grants/{grant['id']}/credentials")
    _out(data, as_json, _describe_request(data))
    if not as_json and data.get("credential"):
        _print_credential(data["credential"])
    elif not as_json and data["status"] == "pending":
        echo(f"  approvers can run: amber approve {data['id']}")
    elif not as_json and data.get("grant") and data["grant"]["status"] == "issued":
        echo(f"  when it starts, get your connection with: amber credentials {data['grant']['id']}")
    if not as_json and data.get("review_status") == "required":
        echo("  BREAK-GLASS: the resource's owners and security have been notified; a review is required.")
    if data["status"] == "denied":
        raise typer.Exit(2)


@app.command("requests")
def list_requests(
    to_approve: Annotated[bool, typer.Option("--to-approve", help="Pending requests you may review.")] = False,
    to_review: Annotated[bool, typer.Option("--to-review", help="Break-glass accesses awaiting review.")] = False,
    all_: Annotated[bool, typer.Option("--all", help="Every request (auditors).")] = False,
    status: Annotated[str | None, typer.Option(help="Only this status.")] = None,
    profile: ProfileOpt = "default",
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List your requests (or those waiting for you)."""
    scope = "to_approve" if to_approve else "to_review" if to_review else "all" if all_ else "mine"
    params = {"scope": scope, **({"status": status} if status else {})}
    rows = _client(profile, url).call("GET", "/v1/requests", params=params)
    lines = [
        f"{escape(r['id'])}  {escape(r['status']):<9} {escape(r['resource'])}/{escape(r['level']):<12} "
        f"{escape(r['requester']['name']):<12} {escape(r['reason'])[:40]}"
        for r in rows
    ]
    _out(rows, as_json, "\n".join(lines) or "no requests")


def _review(verb: str, request_id: str, comment: str, profile: str, url: str | None, as_json: bool) -> None:
    data = _client(profile, url).call("POST", f"/v1/requests/{request_id}/{verb}", {"comment": comment})
    _out(data, as_json, _describe_request(data))


@app.command()
def approve(
    request_id: str,
    comment: Annotated[str, typer.Option(help="Recorded with your approval.")] = "",
    profile: ProfileOpt = "default",
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Approve a pending request."""
    _review("approve", request_id, comment, profile, url, as_json)


@app.command()
def deny(
    request_id: str,
    comment: Annotated[str, typer.Option(help="Recorded with your denial.")] = "",
    profile: ProfileOpt = "default",
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Deny a pending request."""
    _review("deny", request_id, comment, profile, url, as_json)


@app.command()
def review(
    request_id: str,
    comment: Annotated[str, typer.Option(help="What was checked (recorded).")],
    profile: ProfileOpt = "default",
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Complete the post-hoc review of a break-glass access."""
    data = _client(profile, url).call("POST", f"/v1/requests/{request_id}/review", {"comment": comment})
    _out(data, as_json, f"request {data['id']}: review {data['review_status']}")


@app.command()
def cancel(request_id: str, profile: ProfileOpt = "default", url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Cancel one of your pending requests."""
    data = _client(profile, url).call("POST", f"/v1/requests/{request_id}/cancel")
    _out(data, as_json, _describe_request(data))


# -- grants ------------------------------------------------------------------------------------------------


@app.command("grants")
def list_grants(
    all_: Annotated[bool, typer.Option("--all", help="Every grant (auditors).")] = False,
    live: Annotated[bool, typer.Option("--live", help="Only issued or active grants.")] = False,
    profile: ProfileOpt = "default",
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List your grants."""
    params = {"scope": "all" if all_ else "mine", "live": live}
    rows = _client(profile, url).call("GET", "/v1/grants", params=params)
    lines = [
        f"{escape(g['id'])}  {escape(g['status']):<8} {escape(g['resource'])}/{escape(g['level']):<12} "
        f"{escape(g['role'])}  expires {_when(g['expires_at'])}"
        for g in rows
    ]
    _out(rows, as_json, "\n".join(lines) or "no grants")


@app.command()
def credentials(grant_id: str, profile: ProfileOpt = "default", url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Get an approved grant's connection string. It is shown exactly once."""
    data = _client(profile, url).call("POST", f"/v1/grants/{grant_id}/credentials")
    _out(data, as_json, f"grant {grant_id}: role {data['user']}")
    if not as_json:
        _print_credential(data)


@app.command()
def connect(
    grant_id: str,
    print_only: Annotated[
        bool, typer.Option("--print", help="Print the connection string instead of starting psql.")
    ] = False,
    profile: ProfileOpt = "default",
    url: UrlOpt = None,
) -> None:
    """Start psql on a grant (through the gateway: a fresh token each time; direct: only once)."""
    import os
    import shutil

    data = _client(profile, url).call("POST", f"/v1/grants/{grant_id}/credentials")
    if print_only:
        echo(data["url"])
        return
    psql = shutil.which("psql")
    if psql is None:
        echo(data["url"])
        raise InvalidInput("psql is not installed; use the connection string above with your client")
    # The token goes to psql in its environment, not on its command line, where `ps` would show it to everyone
    # on the machine; libpq then proves it with SCRAM (the gateway) or sends it inside TLS (never in the clear).
    env = {**os.environ, "PGPASSWORD": data["password"]}
    os.execve(psql, [psql, _without_password(data["url"], data["password"])], env)  # noqa: S606 - the point


def _without_password(url: str, password: str) -> str:
    """`postgresql://user:password@host/...` -> `postgresql://user@host/...`."""
    return url.replace(f":{quote(password, safe='')}@", "@", 1)


@app.command()
def revoke(
    grant_id: str,
    reason: Annotated[str, typer.Option(help="Recorded with the revocation.")] = "",
    profile: ProfileOpt = "default",
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """End a grant now (your own, or any as an admin). Live sessions are cut."""
    data = _client(profile, url).call("POST", f"/v1/grants/{grant_id}/revoke", {"reason": reason})
    _out(
        data, as_json, f"grant {escape(data['id'])}: {escape(data['status'])} ({escape(data.get('end_reason') or '-')})"
    )


# -- local administration ----------------------------------------------------------------------------------


@audit_app.command("verify")
def audit_verify(
    as_json: JsonOpt = False,
    bundle: Annotated[Path | None, typer.Option("--bundle", help="Verify an `amber audit export` directory.")] = None,
    key: Annotated[list[str] | None, typer.Option("--key", help="Trusted checkpoint key (name+id+key).")] = None,
    checkpoint: Annotated[
        list[Path] | None,
        typer.Option("--checkpoint", help="Witnessed checkpoints: a note, a file witness's lines, a fetched DIR."),
    ] = None,
    since: Annotated[Path | None, typer.Option("--since", help="A checkpoint you kept: the log only grew.")] = None,
    allow_unsigned_tail: Annotated[
        bool,
        typer.Option("--allow-unsigned-tail", help="Pass even if no trusted checkpoint covers the last entries."),
    ] = False,
    witness_key: Annotated[
        list[str] | None,
        typer.Option("--witness-key", help="A witness's verifier key (repeatable), for --min-witnesses."),
    ] = None,
    min_witnesses: Annotated[
        int,
        typer.Option(
            "--min-witnesses", min=0, help="Valid cosignatures by --witness-key the checkpoint covering the head needs."
        ),
    ] = 0,
    legacy_key_names: Annotated[
        bool,
        typer.Option(
            "--legacy-key-names",
            help="Accept checkpoints by keys not named after the origin if the log later rotated away from them.",
        ),
    ] = False,
) -> None:
    """Verify the ledger (chain, Merkle tree, checkpoints) and replay it against the state tables."""
    from amber import audit
    from amber.cli.ledger_cmds import checkpoint_files, local, trust_stored_key, verify_offline
    from amber.ledger.tlog import Verifier, notes_in

    witnessed = checkpoint_files(checkpoint or [])
    if bundle is not None:
        verify_offline(
            bundle,
            key or [],
            witnessed,
            since,
            as_json,
            allow_unsigned_tail=allow_unsigned_tail,
            legacy_key_names=legacy_key_names,
            witness_keys=witness_key or [],
            min_witnesses=min_witnesses,
        )
        return
    ctx = local()
    if not key:
        trust_stored_key(ctx)
    with ctx.uow() as session:
        report = audit.verify(
            session,
            keys=[Verifier.parse(k) for k in key or []],
            witnessed=[note for p in witnessed for note in notes_in(p)],
            since=(str(since), since.read_text()) if since else None,
            origin=ctx.origin,
            allow_unsigned_tail=allow_unsigned_tail,
            legacy_key_names=legacy_key_names,
            witness_keys=[Verifier.parse(k) for k in witness_key or []],
            min_witnesses=min_witnesses,
        )
    data = {
        "ok": report.ok,
        "entries": report.entries,
        "head_hash": report.head_hash,
        "problems": report.problems,
    }
    human = (
        f"ledger OK: {report.entries} entries, head {report.head_hash}"
        if report.ok
        else "ledger verification FAILED:\n  " + "\n  ".join(report.problems)
    )
    _out(data, as_json, human)
    if not report.ok:
        raise typer.Exit(1)


@audit_app.command("tail")
def audit_tail(
    lines: Annotated[int, typer.Option("-n", min=0, help="How many recent entries.")] = 20,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new entries.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Print the newest N ledger entries, oldest first (as tail does); --follow keeps printing new ones."""
    from amber import ledger
    from amber.core.db import make_engine, make_unit_of_work
    from amber.core.settings import Settings

    uow = make_unit_of_work(make_engine(Settings().resolved_database_url))
    with uow() as session:
        last, _ = ledger.head(session)
    after = max(0, last - lines)  # seqs are dense (1, 2, 3, ...: the hash chain has no gaps)
    while True:
        with uow() as session:
            page = ledger.entries(session, after_seq=after, limit=TAIL_PAGE)
        for entry in page:
            if not follow and entry.seq > last:
                return  # appended while paging: not among the newest N when the command started
            echo(json.dumps(entry.as_dict(), sort_keys=True, default=str) if as_json else _tail_line(entry))
            after = entry.seq
        if len(page) == TAIL_PAGE and (follow or after < last):
            continue  # more entries already there: the next page at once
        if not follow:
            return
        sys.stdout.flush()
        time.sleep(0.5)


TAIL_PAGE = 1000  # entries read per query by `audit tail`


def _tail_line(entry: Any) -> str:
    """One entry on one line; every value escaped (statement text, names and reasons come from users)."""
    payload = json.dumps(entry.payload, sort_keys=True)  # ASCII: json escapes controls and bidi characters
    return (
        f"{entry.seq:>6} {entry.at.strftime('%H:%M:%S.%f')[:-3]} {escape(entry.event_type):<24} "
        f"{escape(entry.subject_kind)}:{escape(entry.subject_id)} by {escape(entry.actor.name)}  {payload[:120]}"
    )


def _resource_provisioner(name: str) -> Any:
    from amber.catalog import load_catalog
    from amber.core.settings import Settings
    from amber.provisioners.registry import build

    catalog = load_catalog(Settings().catalog)
    resource = catalog.resource(name)
    return build(resource.kind, catalog.resolve_connection(name), resource.grantee_group)


def _direct_levels_caveat(name: str, codes: set[str]) -> list[Any]:
    """What the weaker guarantees found by `check` mean for this resource's direct levels (the role's password)."""
    from amber.catalog import load_catalog
    from amber.core.settings import Settings
    from amber.provisioners import Finding

    levels = load_catalog(Settings().catalog).resource(name).levels
    direct = sorted(level for level, spec in levels.items() if getattr(spec, "via", "direct") == "direct")
    weaker = []
    if "expiry-cut-unavailable" in codes:
        weaker.append("a live session can outlive the grant's expiry while amber is down")
    if codes & {"pgaudit-unavailable", "pgaudit-not-settable"}:
        weaker.append("what a session reads is not recorded")
    if not direct or not weaker:
        return []
    message = f"direct levels of {name} ({', '.join(direct)}): {'; '.join(weaker)} (gateway levels are not affected)"
    return [Finding("direct-levels-weaker", "warning", message, "use a gateway level (via: gateway), or fix the above")]


@resource_app.command("check")
def resource_check(name: str, as_json: JsonOpt = False) -> None:
    """Report what on the target would let a granted role write or skip its password, with the fixes."""
    findings = _resource_provisioner(name).check()
    findings += _direct_levels_caveat(name, {f.code for f in findings})
    data = [{"code": f.code, "severity": f.severity, "message": f.message, "fix": f.fix} for f in findings]
    human = []
    for f in findings:
        human.append(f"[{f.severity.upper()}] {f.code}: {f.message}")
        if f.fix:
            human.append(f"    fix: {f.fix}")
    _out(data, as_json, "\n".join(human))
    if any(f.severity == "danger" for f in findings):
        raise typer.Exit(1)


@resource_app.command("harden")
def resource_harden(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", help="Apply without asking.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Apply the REVOKE statements `amber resource check` proposes."""
    provisioner = _resource_provisioner(name)
    if not yes:
        findings = [f for f in provisioner.check() if f.fix and f.severity == "danger"]
        fixes = [f.fix for f in findings]
        lines = []
        for f in findings:
            lines.append(f"  {f.fix}")
            if "CAUTION" in f.message:  # the fix may take something the application uses (check says what)
                lines.append(f"    {f.message[f.message.index('CAUTION') :]}")
        echo("\n".join(lines) or "  nothing to apply")
        if not fixes or not typer.confirm("apply these statements?"):
            raise typer.Exit(0)
    applied = provisioner.harden()
    _out(applied, as_json, "\n".join(f"applied: {s}" for s in applied) or "nothing to apply")


@catalog_app.command("validate")
def catalog_validate(path: Annotated[Path | None, typer.Argument(help="Catalog file.")] = None) -> None:
    """Validate a catalog file without starting amber."""
    from amber.api.runtime import load_policies
    from amber.catalog import load_catalog
    from amber.core.settings import Settings

    catalog = load_catalog(path or Settings().catalog)
    bundle = load_policies(catalog)
    echo(
        f"{catalog.path}: OK ({len(catalog.resources)} resources; {len(bundle.statements)} policies in "
        f"{bundle.source}, hash {bundle.hash[:12]})"
    )


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate amber's state store."""
    from amber.core.db import make_engine
    from amber.core.migrate import upgrade
    from amber.core.settings import Settings

    settings = Settings()
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    upgrade(make_engine(settings.resolved_database_url))
    echo("state store is up to date")


@demo_app.command("setup")
def demo_setup() -> None:
    """Create the demo database behind AMBER_DEMO_PG_URL with a few tables of sample data."""
    from amber.cli.demo import setup

    echo(setup())


def main() -> None:
    try:
        # Without standalone mode click returns typer.Exit's code instead of exiting.
        code = app(standalone_mode=False)
    except click.exceptions.Abort:
        echo("aborted", file=sys.stderr)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # typer vendors its own click: usage errors, BadParameter
        echo(f"amber: error: {exc.format_message()}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except (AmberError, ValueError) as exc:
        message = exc.message if isinstance(exc, AmberError) else str(exc)
        echo(f"amber: error: {message}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
