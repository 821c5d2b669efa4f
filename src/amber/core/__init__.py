"""Shared foundations: settings, clock, database, errors, crypto helpers, observability.

Nothing here knows about requests, grants or the ledger; every other package may import it.
"""
