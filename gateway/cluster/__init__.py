"""Gateways clustered on PostgreSQL (`store.url`): one API over every site.

Each gateway keeps its own links' journal and calls in its local SQLite file first (so a database outage or
failover never stops journalling, and kill -9 loses nothing), and PostgreSQL holds what the cluster shares:

- schema.py    the cluster tables and their versioned migrations (one node migrates; the others wait);
- database.py  the connection pool, and what "the database is unreachable" means to callers;
- calls.py     every node's calls as the cluster sees them: upserts and lookups in PostgreSQL;
- shipper.py   ships this node's call changes to PostgreSQL from its durable event feed, resuming after
               restarts and outages from a watermark kept in the database;
- listener.py  the one LISTEN connection: the node's lock, call starts and commands from other nodes;
- members.py   heartbeats, published extensions and recorders, and who is alive;
- commands.py  KeepCall for a call another node owns: a command row and NOTIFY, run by the owner;
- tokens.py    API tokens shared by every node;
- node.py      ClusterNode, which owns all of the above for a running gateway.
"""
