"""The durable store: calls, recordings, the raw line journal, the quarantine, the event feed and API tokens in
one SQLite (WAL) file. One writer thread group-commits every write; readers use their own connections in a small pool,
never the loop.

store.Store is the face the gateway uses; writer.py is the engine behind its writes, readers.py behind its
reads; schema.py holds the migrations, rows.py the mapping of rows to the model, queries.py / writes.py /
prune.py the SQL.
"""

from gateway.store.prune import PRUNE_CALLS, PRUNE_EVENTS, PRUNE_JOURNAL, PRUNE_QUARANTINE
from gateway.store.rows import QuarantineEntry, StoreSpace
from gateway.store.store import Store

__all__ = [
    "PRUNE_CALLS",
    "PRUNE_EVENTS",
    "PRUNE_JOURNAL",
    "PRUNE_QUARANTINE",
    "QuarantineEntry",
    "Store",
    "StoreSpace",
]
