"""amber: self-service, time-boxed, read-only access to production, with a tamper-evident record."""

__version__ = "0.1.0"
