"""Sans-I/O PostgreSQL v3 protocol: bytes in, messages out; message builders for the other direction."""
