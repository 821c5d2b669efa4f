"""The catalog: resources and their immutable access levels, loaded from amber.yaml and validated whole."""

from amber.catalog.loader import Catalog, load_catalog, resolve_reference
from amber.catalog.schema import IdentityConfig, IssuerConfig, Justification, PolicyConfig, PostgresLevel, Resource

__all__ = [
    "Catalog",
    "IdentityConfig",
    "IssuerConfig",
    "Justification",
    "PolicyConfig",
    "PostgresLevel",
    "Resource",
    "load_catalog",
    "resolve_reference",
]
