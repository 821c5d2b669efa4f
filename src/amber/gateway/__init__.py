"""The PostgreSQL gateway: users connect with their amber credential; every statement is judged and recorded.

pgwire/ is the sans-I/O protocol codec; statements.py judges SQL with PostgreSQL's own parser (pglast);
server.py runs the asyncio server and relays to the upstream database as the grant's own role.
"""
