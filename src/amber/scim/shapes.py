"""The request and response shapes Okta and Entra ID send and expect (RFC 7643, RFC 7644): case-insensitive
attribute names, PATCH operations, member lists, the one filter shape, list responses, `meta`, and errors
that read as SCIM errors.

Invariant: a shape amber does not support is refused with a SCIM error naming it (`invalidSyntax`,
`invalidPath`, `invalidValue`, `invalidFilter`), never silently ignored. Pure: no database, no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypeVar

from amber.core.clock import as_utc
from amber.core.errors import AmberError, InvalidInput

T = TypeVar("T")

ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"


def scim_error(kind: type[AmberError], message: str, scim_type: str | None = None) -> AmberError:
    """An AmberError that also reads as a SCIM error (RFC 7644 section 3.12) to Okta and Entra ID."""
    extra: dict[str, Any] = {"schemas": [ERROR_SCHEMA]}
    if scim_type:
        extra["scimType"] = scim_type
    return kind(message, extra=extra)


def lower_keys(value: Mapping[str, Any]) -> dict[str, Any]:
    """SCIM attribute names are case-insensitive (RFC 7643 section 2.1); Entra ID capitalises some."""
    return {str(k).lower(): v for k, v in value.items()}


def required_str(body: Mapping[str, Any], name: str) -> str:
    value = lower_keys(body).get(name.lower())
    if not isinstance(value, str) or not value.strip():
        raise scim_error(InvalidInput, f"{name} is required", "invalidValue")
    return value.strip()


def opt_str(value: object) -> str | None:
    return str(value) if value not in (None, "") else None


def as_bool(value: object) -> bool:
    # Entra ID sends "True"/"False" as strings in PATCH operations.
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise scim_error(InvalidInput, f"not a boolean: {value!r}", "invalidValue")


def patch_operations(body: Mapping[str, Any]) -> list[tuple[str, str | None, Any]]:
    operations = lower_keys(body).get("operations")
    if not isinstance(operations, list) or not operations:
        raise scim_error(InvalidInput, "a PATCH needs Operations", "invalidSyntax")
    out = []
    for operation in operations:
        if not isinstance(operation, Mapping):
            raise scim_error(InvalidInput, "each operation must be an object", "invalidSyntax")
        lowered = lower_keys(operation)
        op = str(lowered.get("op", "")).lower()
        path = lowered.get("path")
        out.append((op, str(path) if path else None, lowered.get("value")))
    return out


def patch_ids(current: set[str], op: str, path: str, value: object) -> set[str]:
    """A group's members (or a user's groups) after one PATCH operation, in the shapes Okta and Entra ID send."""
    target = path.lower()
    name = target.split("[", 1)[0]
    if target == name:
        if op == "add":
            return current | set(member_ids(value))
        if op == "replace":
            return set(member_ids(value))
        if op == "remove":
            # Entra ID names the members in `value`; without a value, all of them go (RFC 7644 3.5.2.2).
            return current - set(member_ids(value)) if value is not None else set()
    elif op == "remove" and target.endswith("]"):
        # Okta: {"op": "remove", "path": "members[value eq \"<id>\"]"}
        attribute, member = parse_filter(path[len(name) + 1 : -1])
        if attribute.lower() != "value":
            raise scim_error(InvalidInput, f"unsupported {name} filter {path!r}", "invalidFilter")
        return current - {member}
    raise scim_error(InvalidInput, f"unsupported PATCH {op} {path!r}", "invalidPath")


def member_ids(value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list):
        raise scim_error(InvalidInput, "members must be a list of {value: id}", "invalidValue")
    ids = []
    for member in value:
        member_id = lower_keys(member).get("value") if isinstance(member, Mapping) else None
        if not isinstance(member_id, str) or not member_id:
            raise scim_error(InvalidInput, "each member needs a value (the user id)", "invalidValue")
        ids.append(member_id)
    return ids


def parse_filter(text: str) -> tuple[str, str]:
    """The one filter shape Okta and Entra ID send: `attribute eq "value"`."""
    parts = text.strip().split(" ", 2)
    if len(parts) != 3 or parts[1].lower() != "eq" or not (parts[2].startswith('"') and parts[2].endswith('"')):
        raise scim_error(InvalidInput, f'unsupported filter {text!r}; only `attribute eq "value"`', "invalidFilter")
    value = json.loads(parts[2])
    return parts[0], str(value)


def filter_on(text: str, fields: Mapping[str, T]) -> tuple[str, T, str]:
    """A list filter's attribute, the field it names among `fields` (keys lower-case), and its value."""
    attribute, value = parse_filter(text)
    field = fields.get(attribute.lower())
    if field is None:
        raise scim_error(InvalidInput, f"filtering on {attribute!r} is not supported", "invalidFilter")
    return attribute, field, value


def json_list(text: str) -> list[str]:
    value = json.loads(text)
    return [str(v) for v in value] if isinstance(value, list) else []


def json_list_of_dicts(text: str) -> list[dict[str, Any]]:
    value = json.loads(text)
    return [dict(v) for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def meta(kind: str, rid: str, created: datetime, updated: datetime) -> dict[str, str]:
    return {
        "resourceType": kind,
        "created": as_utc(created).isoformat(),
        "lastModified": as_utc(updated).isoformat(),
        "location": f"/scim/v2/{kind}s/{rid}",
    }


def list_response(resources: list[dict[str, Any]], *, total: int, start: int) -> dict[str, Any]:
    return {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
        "totalResults": total,
        "startIndex": max(start, 1),
        "itemsPerPage": len(resources),
        "Resources": resources,
    }
