"""Every package in the lock files is needed: by amber's declared dependencies (pyproject.toml: the project's
dependencies, its extras, its build requirements) or by one of theirs, transitively (issue 13, item 9).

Reads the installed distributions' metadata (`make lint` runs after `make dev`), so it sees exactly what pip
resolved. Exits 1 naming every locked package nothing requires, and every declared dependency the locks miss.
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ("requirements.lock", "requirements-dev.lock")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked() -> dict[str, str]:
    """name -> the lock file that pins it."""
    pins: dict[str, str] = {}
    for lock in LOCKS:
        for raw in (ROOT / lock).read_text().splitlines():
            line = raw.split("#", 1)[0].strip().removesuffix("\\").strip()
            if not line or line.startswith("-"):
                continue
            pins[normalize(Requirement(line.split(";", 1)[0].strip()).name)] = lock
    return pins


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    roots = [Requirement(r) for r in project["project"]["dependencies"]]
    for extra in project["project"].get("optional-dependencies", {}).values():
        roots += [Requirement(r) for r in extra]
    roots += [Requirement(r) for r in project["build-system"]["requires"]]
    return roots


def closure(roots: list[Requirement]) -> set[str]:
    """Every distribution the roots need here, with their extras, following installed metadata."""
    environment = {k: str(v) for k, v in default_environment().items()}
    seen: set[tuple[str, str]] = set()
    needed: set[str] = set()
    todo = [(r, "") for r in roots]
    while todo:
        requirement, extra = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({**environment, "extra": extra}):
            continue
        name = normalize(requirement.name)
        extras = sorted(requirement.extras)
        for wanted in ["", *extras]:
            if (name, wanted) in seen:
                continue
            seen.add((name, wanted))
            needed.add(name)
            try:
                requires = metadata.requires(name) or []
            except metadata.PackageNotFoundError:
                continue
            todo += [(Requirement(r), wanted) for r in requires]
    return needed


def main() -> int:
    pins = locked()
    needed = closure(declared())
    unused = sorted(name for name in pins if name not in needed)
    missing = sorted(name for name in needed if name not in pins and name != "amber")
    for name in unused:
        print(f"{pins[name]}: {name} is locked but nothing amber declares requires it")
    for name in missing:
        print(f"pyproject.toml: {name} is needed but not in any lock file")
    if unused or missing:
        return 1
    print(f"locks: OK ({len(pins)} packages, each required)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
