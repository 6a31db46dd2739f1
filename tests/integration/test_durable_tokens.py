"""API tokens live in the store: a token from RequestToken still works after the gateway restarts on the same
store file, the file holds digests only, and a store that cannot answer makes the API answer 503."""

from __future__ import annotations

import base64
import hashlib
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path

import aiohttp

from gateway.config import ApiConfig, ApiKeyConfig, GatewayConfig, UserConfig
from gateway.passwords import hash_password
from gateway.service import Gateway

KEY_A = "0B6F5A52-8a0e-4a57-9d0e-6f2a3c1d9e41"  # mixed case: GUIDs are case-insensitive
KEY_B = "5d0c7e1a-2b3f-4c5d-8e9f-0a1b2c3d4e5f"
PASSWORD = "s3cret-Pa55"
TOKEN_TTL_S = 3600


def token_config(gateway_config: Callable[..., GatewayConfig], *users: str) -> GatewayConfig:
    password_hash = hash_password(PASSWORD, n=2**4)  # cheap parameters: tests check logic, not scrypt
    return gateway_config(
        api=ApiConfig(
            token_ttl_s=TOKEN_TTL_S,
            keys=(ApiKeyConfig(KEY_A, "a", require_token=True), ApiKeyConfig(KEY_B, "b", require_token=True)),
            users=tuple(UserConfig(name, password_hash) for name in users or ("apiuser",)),
        )
    )


async def request_token(gateway: Gateway, key: str = KEY_A) -> str:
    params = {"action": "RequestToken", "apiKey": key, "userName": "apiuser", "password": PASSWORD}
    params["responseType"] = "TEXT"
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/verba/api", params=params) as response:
        assert response.status == 200, await response.text()
        return (await response.text()).strip()


async def use_token(gateway: Gateway, token: str, key: str = KEY_A) -> tuple[int, str]:
    """A call that needs the token: (HTTP status, body). 200 means the token was accepted (the lookup itself
    finds nothing: no calls)."""
    params = {"action": "GetCallID", "apiKey": key, "token": token, "extension": "8856", "status": "last"}
    params["responseType"] = "TEXT"
    async with aiohttp.ClientSession() as session, session.get(f"{gateway.url}/verba/api", params=params) as response:
        return response.status, (await response.text()).strip()


async def operator_state(gateway: Gateway, token: str) -> int:
    """The status page's state with a token alone, which stands for the key it was issued for."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{gateway.url}/status/state", params={"token": token}) as response,
    ):
        return response.status


async def run_and_stop(config: GatewayConfig) -> Gateway:
    gateway = Gateway(config)
    await gateway.start()
    return gateway


def expire_in_file(path: Path, token: str) -> None:
    """Time passes while the gateway is down: the token's expiry moves to the past (written from outside)."""
    connection = sqlite3.connect(path)
    try:
        with connection:
            changed = connection.execute(
                "UPDATE tokens SET expires_at = expires_at - ? WHERE digest = ?",
                (TOKEN_TTL_S + 1, hashlib.sha256(token.encode()).digest()),
            ).rowcount
        assert changed == 1
    finally:
        connection.close()


async def test_tokens_survive_a_restart(gateway_config, started) -> None:
    config = token_config(gateway_config)
    first = await run_and_stop(config)
    try:
        token, to_expire, for_b = [await request_token(first, key) for key in (KEY_A, KEY_A, KEY_B)]
        assert (await use_token(first, token))[0] == 200
    finally:
        await first.stop()
    expire_in_file(config.store.path, to_expire)

    second = await started(config)  # a new process in all but name: an empty cache, the same store file
    assert (await use_token(second, token))[0] == 200
    assert await operator_state(second, token) == 200
    assert await use_token(second, to_expire) == (401, "ERROR: Token expired")
    assert await use_token(second, for_b, KEY_A) == (401, "ERROR: Token is not valid for this API key")
    assert (await use_token(second, for_b, KEY_B))[0] == 200
    assert await use_token(second, token[:-1]) == (401, "ERROR: Invalid token")


async def test_a_token_of_a_user_removed_before_the_restart_is_invalid(gateway_config, started) -> None:
    config = token_config(gateway_config, "apiuser", "other")
    first = await run_and_stop(config)
    try:
        token = await request_token(first)
    finally:
        await first.stop()
    second = await started(token_config(gateway_config, "other"))
    assert await use_token(second, token) == (401, "ERROR: Invalid token")


def secrets_of(token: str) -> list[bytes]:
    """Every form of the token, the key and the password a careless store could hold."""
    raw_token = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    key_forms = [form.encode() for form in (KEY_A, KEY_A.lower(), KEY_A.upper())] + [uuid.UUID(KEY_A).bytes]
    return [token.encode(), raw_token, *key_forms, PASSWORD.encode()]


async def test_the_store_keeps_digests_only(gateway_config) -> None:
    config = token_config(gateway_config)
    gateway = await run_and_stop(config)
    try:
        tokens = [await request_token(gateway) for _ in range(3)]
    finally:
        await gateway.stop()  # the last connection's close checkpoints the WAL into the file
    path = config.store.path
    files = [candidate for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if candidate.exists()]
    raw = b"".join(candidate.read_bytes() for candidate in files)
    connection = sqlite3.connect(path)
    try:
        tables = [name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        values = [value for table in tables for row in connection.execute(f"SELECT * FROM {table}") for value in row]
        stored = connection.execute("SELECT digest, key_digest, user FROM tokens ORDER BY digest").fetchall()
    finally:
        connection.close()
    text = [value.encode() if isinstance(value, str) else value for value in values if isinstance(value, str | bytes)]
    for token in tokens:
        for secret in secrets_of(token):
            assert secret not in raw, "a token, key or password in the store file"  # no dump of the whole file
            assert not any(secret in value for value in text), "a token, key or password in a table"
    # What is there instead: the digests (found in the raw bytes too, so the search above reads the right data).
    key_digest = hashlib.sha256(KEY_A.lower().encode()).digest()
    assert stored == sorted((hashlib.sha256(token.encode()).digest(), key_digest, "apiuser") for token in tokens)
    assert all(hashlib.sha256(token.encode()).digest() in raw for token in tokens)


def rename_tokens_table(path: Path, to: str, back: str = "tokens") -> None:
    """Another process takes the table away (or gives it back): every token read and write fails meanwhile."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute(f"ALTER TABLE {back} RENAME TO {to}")
    finally:
        connection.close()


async def test_a_store_that_cannot_answer_makes_token_requests_503(gateway_config, started) -> None:
    config = token_config(gateway_config)
    first = await run_and_stop(config)
    try:
        token = await request_token(first)
    finally:
        await first.stop()
    second = await started(config)  # an empty cache: the token must be read from the store
    rename_tokens_table(config.store.path, "tokens_away")
    status, body = await use_token(second, token)
    assert status == 503, body
    assert await operator_state(second, token) == 503
    params = {"action": "RequestToken", "apiKey": KEY_A, "userName": "apiuser", "password": PASSWORD}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{second.url}/verba/api", params=params) as response,
    ):
        assert response.status == 503  # no token is answered that the store has not kept
    rename_tokens_table(config.store.path, "tokens", back="tokens_away")
    assert (await use_token(second, token))[0] == 200
