"""API tokens in the cluster database (gateway.tokens.TokenStore): a token from RequestToken on one node works
on every node. Only digests are kept, as in the SQLite store."""

from __future__ import annotations

from gateway.cluster.database import Database
from gateway.tokens import StoredToken

UPSERT_TOKEN = (
    "INSERT INTO tokens (digest, key_digest, user_name, expires_at) VALUES ($1, $2, $3, $4)"
    " ON CONFLICT (digest) DO UPDATE SET key_digest = EXCLUDED.key_digest, user_name = EXCLUDED.user_name,"
    " expires_at = EXCLUDED.expires_at"
)
SELECT_TOKEN = "SELECT digest, key_digest, user_name, expires_at FROM tokens WHERE digest = $1"
PRUNE_TOKENS = (
    "DELETE FROM tokens WHERE digest IN (SELECT digest FROM tokens WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2)"
)


class ClusterTokens:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def put(self, grant: StoredToken) -> None:
        await self._database.execute(UPSERT_TOKEN, grant.digest, grant.key_digest, grant.user, grant.expires_at)

    async def get(self, digest: bytes) -> StoredToken | None:
        row = await self._database.fetchrow(SELECT_TOKEN, digest)
        if row is None:
            return None
        return StoredToken(bytes(row["digest"]), bytes(row["key_digest"]), row["user_name"], float(row["expires_at"]))

    async def prune(self, now_epoch: float, limit: int) -> int:
        status = await self._database.execute(PRUNE_TOKENS, now_epoch, limit)
        return int(status.rsplit(" ", 1)[-1])  # "DELETE n"
