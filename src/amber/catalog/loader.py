"""Loading amber.yaml: parse, validate everything, and point at the exact line of any problem.

Invariant: amber never runs on a half-valid catalog. `load_catalog` either returns a complete, validated
Catalog or raises ConfigError naming the file, the line, the path inside the file and the problem; the
caller keeps whatever catalog it had before.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

from amber.catalog.schema import (
    CatalogFile,
    IdentityConfig,
    PolicyConfig,
    PostgresLevel,
    Resource,
    split_qualified,
    sql_identifier,
)
from amber.core.errors import ConfigError, NotFound

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Catalog:
    path: Path
    content_hash: str
    identity: IdentityConfig
    policy: PolicyConfig
    resources: dict[str, Resource]
    _lines: dict[Loc, int] = field(default_factory=dict, repr=False, compare=False)

    def resource(self, name: str) -> Resource:
        try:
            return self.resources[name]
        except KeyError:
            known = ", ".join(sorted(self.resources)) or "none"
            raise NotFound(f"no resource named {name!r} in the catalog (known: {known})") from None

    def level(self, resource_name: str, level_name: str) -> PostgresLevel:
        resource = self.resource(resource_name)
        try:
            return resource.levels[level_name]
        except KeyError:
            known = ", ".join(sorted(resource.levels))
            raise NotFound(f"resource {resource_name!r} has no access level {level_name!r} (known: {known})") from None

    @property
    def bundle_path(self) -> Path:
        path = Path(self.policy.bundle)
        return path if path.is_absolute() else self.path.parent / path

    def where(self, loc: Loc) -> str:
        """`file:line` of the closest YAML node to a path, for messages about a resolved value."""
        return f"{self.path}:{_line_for(self._lines, loc)}"

    def resolve_connection(self, resource_name: str) -> str:
        """Resolve a resource's admin connection reference. The value is a secret: never log it."""
        resource = self.resource(resource_name)
        index = list(self.resources).index(resource_name)
        where = self.where(("resources", index, "connection"))
        return resolve_reference(resource.connection, where=where, base=self.path.parent)


def resolve_reference(ref: str, *, where: str, base: Path) -> str:
    kind, _, target = ref.partition(":")
    if kind == "env":
        value = os.environ.get(target)
        if not value:
            raise ConfigError(f"{where}: environment variable {target} (from {ref!r}) is not set")
        return value
    if kind == "file":
        path = Path(target)
        if not path.is_absolute():
            path = base / path
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read {path} (from {ref!r}): {exc.strerror}") from None
    raise ConfigError(f"{where}: {ref!r} is not an env: or file: reference")


def load_catalog(path: Path | str) -> Catalog:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read catalog: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: not valid YAML: {exc.problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the catalog must be a mapping with `resources:` at the top")
    lines: dict[Loc, int] = {}
    if node is not None:
        _index_lines(node, (), lines)
        duplicates = _duplicate_keys(path, node)
        if duplicates:
            raise ConfigError("invalid catalog:\n  " + "\n  ".join(duplicates))
    try:
        parsed = CatalogFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(path, exc, lines)) from None
    problems = _masks_outside_levels(path, parsed.resources, lines)
    if problems:
        raise ConfigError("invalid catalog:\n  " + "\n  ".join(problems))
    return Catalog(
        path=path,
        content_hash=hashlib.sha256(raw).hexdigest(),
        identity=parsed.identity,
        policy=parsed.policy,
        resources={resource.name: resource for resource in parsed.resources},
        _lines=lines,
    )


def _masks_outside_levels(path: Path, resources: list[Resource], lines: dict[Loc, int]) -> list[str]:
    """A masked table outside its level's schemas: the level cannot read it, so the mask would mean nothing,
    and a gateway judging by schema would not know the table. Refused at load (a typo in either place)."""
    problems = []
    for index, resource in enumerate(resources):
        for level_name, level in resource.levels.items():
            for (schema, table), _columns in level.masks().items():
                if schema in level.schemas:
                    continue
                raw = next(key for key in level.masked_columns if _resolved_table(key) == (schema, table))
                loc: Loc = ("resources", index, "levels", level_name, "masked_columns", raw)
                same_letters = [s for s in level.schemas if s.lower() == schema.lower()]
                hint = (
                    f" (schema names in `schemas` are exact; unquoted here, {raw.split('.', 1)[0]} means {schema}: "
                    f"write '\"{same_letters[0]}\".{raw.split('.', 1)[1]}')"
                    if same_letters
                    else ""
                )
                problems.append(
                    f"{path}:{_line_for(lines, loc)}: {_dotted(loc[:-1])}: masked table {raw} is outside the "
                    f"level's schemas ({', '.join(level.schemas)}); add its schema or fix the name{hint}"
                )
    return problems


def _resolved_table(raw: str) -> tuple[str, str]:
    schema, table = (sql_identifier(part) for part in split_qualified(raw))
    return schema, table


def _duplicate_keys(path: Path, node: yaml.Node) -> list[str]:
    """A key given twice in one mapping: YAML keeps only the last, silently (a second `masked_columns:` would
    drop the first one's masks). Refused, naming the second."""
    problems = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = str(key_node.value) if isinstance(key_node, yaml.ScalarNode) else ""
            if key and key in seen:
                problems.append(
                    f"{path}:{key_node.start_mark.line + 1}: {key} is given twice in the same mapping "
                    "(YAML would keep only the last, silently)"
                )
            seen.add(key)
            problems += _duplicate_keys(path, value_node)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            problems += _duplicate_keys(path, item)
    return problems


def _index_lines(node: yaml.Node, loc: Loc, lines: dict[Loc, int]) -> None:
    lines[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.start_mark.line)
            lines[(*loc, key)] = key_node.start_mark.line + 1
            _index_lines(value_node, (*loc, key), lines)
            lines[(*loc, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index_lines(item, (*loc, index), lines)


def _line_for(lines: dict[Loc, int], loc: Loc) -> int:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return 1


def _describe(path: Path, exc: ValidationError, lines: dict[Loc, int]) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        loc: Loc = tuple(part for part in error["loc"] if not (isinstance(part, str) and part.startswith("function-")))
        dotted = _dotted(loc) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; amber rejects keys it does not understand)"
        elif error["type"] == "missing":
            message = "required key is missing"
        problems.append(f"{path}:{_line_for(lines, loc)}: {dotted}: {message}")
    return "invalid catalog:\n  " + "\n  ".join(problems)


def _dotted(loc: Loc) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
