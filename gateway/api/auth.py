"""API authentication (docs/api.md §3): API keys, network restrictions, users, and bearer tokens.

Secrets are compared in constant time and never logged: logs carry key *names* and known user
names only — never API keys, passwords, tokens or hashes. Tokens are kept in a TokenStore (the
gateway's store: they survive a restart and hold on every gateway sharing it) as digests only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import hmac
import ipaddress
import secrets
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from zoneinfo import ZoneInfo

import structlog

from gateway.config import ApiConfig, ApiKeyConfig, UserConfig
from gateway.errors import ApiError
from gateway.passwords import DEFAULT_N, PasswordHash, hash_password, parse_password_hash, verify_password
from gateway.tokens import StoredToken, TokenStore, secret_digest

log = structlog.get_logger(__name__)

TOKEN_BYTES = 32  # 256 random bits: unguessable with a wide margin (128 would be enough)
DEFAULT_RESOLVE_TTL_S = 60.0
# A host-name lookup that takes longer than this is treated as failed: the request is answered
# (403) instead of hanging on a dead DNS server for the resolver's full retry schedule.
RESOLVE_TIMEOUT_S = 5.0
# Valid grants kept in memory, so that a token in use costs no store read per request. Only tokens found in
# the store (or issued here) enter it — never what a client merely sends — and the least recently used go first.
DEFAULT_GRANT_CACHE_SIZE = 10_000

BASIC_SCHEME = "basic"
BEARER_SCHEME = "bearer"

MISSING_API_KEY = "Missing parameter 'apiKey'"
INVALID_API_KEY = "Invalid API key"
NETWORK_NOT_ALLOWED = "Access from this address is not allowed for this API key"
MISSING_CREDENTIALS = "Missing user credentials"
INVALID_CREDENTIALS = "Invalid user name or password"
MISSING_TOKEN = "Missing parameter 'token'"
INVALID_TOKEN = "Invalid token"
EXPIRED_TOKEN = "Token expired"
TOKEN_WRONG_KEY = "Token is not valid for this API key"
MALFORMED_AUTHORIZATION = "Malformed Authorization header"

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class TokenGrant:
    key_digest: bytes  # sha256 of the lower-cased key GUID the token was issued for
    user: UserConfig
    expires_at: float  # UTC epoch seconds (the wall clock: it must mean the same after a restart)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the API key, and the user when the call carries a token."""

    key: ApiKeyConfig
    user: UserConfig | None  # None = key-only call

    @property
    def tz(self) -> datetime.tzinfo:
        """The zone for times in responses: the user's, or UTC (GMT) for key-only calls."""
        if self.user is None:
            return datetime.timezone.utc
        return ZoneInfo(self.user.timezone)  # ZoneInfo caches instances per key


def _secret_bytes(value: str) -> bytes:
    # compare_digest refuses non-ASCII str; bytes of any input are fine ("replace" for lone surrogates).
    return value.encode("utf-8", "replace")


def _key_digest(key: ApiKeyConfig) -> bytes:
    """What the token store keeps of the key a token is for: GUIDs are case-insensitive."""
    return secret_digest(key.key.lower())


def _parse_address(text: str) -> _Address | None:
    """A client or resolved address, without %scope; None when it is not an IP address."""
    try:
        return ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None


def _address_forms(address: _Address) -> tuple[_Address, ...]:
    """The address as given, plus its IPv4 form when it is IPv4-mapped IPv6 (::ffff:a.b.c.d)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return (address.ipv4_mapped, address)
    return (address,)


def address_in_networks(remote: str | None, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """Whether the client address (the TCP peer: never a forwarded-for header, which any client can write) is
    in one of the networks; an IPv4-mapped IPv6 peer matches its IPv4 networks too."""
    address = _parse_address(remote) if remote else None
    if address is None:
        return False
    forms = _address_forms(address)
    return any(form in network for network in networks for form in forms)


class Authenticator:
    """Checks API keys, client networks, user passwords and tokens for the API (docs/api.md §3)."""

    def __init__(
        self,
        api: ApiConfig,
        *,
        tokens: TokenStore,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        resolve_ttl_s: float = DEFAULT_RESOLVE_TTL_S,
        grant_cache_size: int = DEFAULT_GRANT_CACHE_SIZE,
    ) -> None:
        self._api = api
        self._tokens = tokens
        self._clock = clock  # host-name cache
        self._wall_clock = wall_clock  # token expiry
        self._resolve_ttl_s = resolve_ttl_s
        self._token_ttl_s = float(api.token_ttl_s)
        self._keys = tuple((_secret_bytes(key.key.lower()), _key_digest(key), key) for key in api.keys)
        self._users_by_name = {user.name: user for user in api.users}
        self._hashes_by_user: dict[str, PasswordHash | None] = {}
        for user in api.users:
            try:
                self._hashes_by_user[user.name] = parse_password_hash(user.password_hash)
            except ValueError:
                log.warning("api user has an unusable password hash; its logins will fail", user=user.name)
                self._hashes_by_user[user.name] = None
        self._dummy_hash: PasswordHash | None = None
        self._grants_by_digest: OrderedDict[bytes, TokenGrant] = OrderedDict()  # least recently used first
        self._grant_cache_size = grant_cache_size
        self._resolved_by_name: dict[str, tuple[float, frozenset[_Address]]] = {}
        self._resolving_by_name: dict[str, asyncio.Future[frozenset[_Address]]] = {}
        self._names_failing: set[str] = set()

    # ---- API keys -----------------------------------------------------------------------------

    def find_key(self, api_key: str | None) -> ApiKeyConfig:
        """The configured key for the `apiKey` parameter (GUID, any case); 401 if missing or unknown."""
        if not api_key:
            raise ApiError(401, MISSING_API_KEY)
        candidate = _secret_bytes(api_key.lower())
        found: ApiKeyConfig | None = None
        for key_bytes, _, key in self._keys:  # every key, no early exit: timing says nothing
            if hmac.compare_digest(candidate, key_bytes):
                found = key
        if found is None:
            raise ApiError(401, INVALID_API_KEY)
        return found

    # ---- network restrictions -----------------------------------------------------------------

    async def check_network(self, key: ApiKeyConfig, remote: str | None) -> None:
        """403 unless the client address is in one of the key's networks (None = any address)."""
        if key.networks is None:
            return
        address = _parse_address(remote) if remote else None
        if address is not None:
            forms = _address_forms(address)
            host_names: list[str] = []
            for entry in key.networks:
                if isinstance(entry, str):
                    host_names.append(entry)
                elif any(form in entry for form in forms):
                    return
            for name in host_names:  # resolve only when no address or range matched
                resolved = await self._resolve(name)
                if any(form in resolved for form in forms):
                    return
        log.info("api client address not allowed", key=key.name, remote=remote)
        raise ApiError(403, NETWORK_NOT_ALLOWED)

    async def _resolve(self, name: str) -> frozenset[_Address]:
        """The addresses of a host name, cached for resolve_ttl_s; a failure gives the empty set."""
        cached = self._resolved_by_name.get(name)
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        pending = self._resolving_by_name.get(name)
        if pending is None:
            # One lookup per name at a time, shared by every request that needs it; shielded so a
            # client that disconnects does not cancel the lookup for the others.
            pending = asyncio.ensure_future(self._lookup(name))
            self._resolving_by_name[name] = pending
            pending.add_done_callback(partial(self._forget_lookup, name))
        return await asyncio.shield(pending)

    def _forget_lookup(self, name: str, _done: asyncio.Future[frozenset[_Address]]) -> None:
        self._resolving_by_name.pop(name, None)

    async def _lookup(self, name: str) -> frozenset[_Address]:
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(name, None, type=socket.SOCK_STREAM), timeout=RESOLVE_TIMEOUT_S
            )
        except (TimeoutError, OSError, UnicodeError, ValueError) as error:
            addresses: frozenset[_Address] = frozenset()
            reason = str(error) or type(error).__name__
            if name in self._names_failing:  # warned already: a dead name must not flood the log
                log.debug("api network host name still does not resolve", host=name, error=reason)
            else:
                self._names_failing.add(name)
                log.warning("api network host name does not resolve; it matches no address", host=name, error=reason)
        else:
            found = (_parse_address(str(info[4][0])) for info in infos)
            addresses = frozenset(form for address in found if address is not None for form in _address_forms(address))
            self._names_failing.discard(name)
        self._resolved_by_name[name] = (self._clock() + self._resolve_ttl_s, addresses)
        return addresses

    # ---- users --------------------------------------------------------------------------------

    async def verify_user(self, user_name: str | None, password: str | None) -> UserConfig:
        """The user whose password this is; 401 with one message for unknown names and wrong passwords."""
        if not user_name or not password:
            raise ApiError(401, MISSING_CREDENTIALS)
        loop = asyncio.get_running_loop()
        user = self._users_by_name.get(user_name)
        stored = self._hashes_by_user.get(user_name) if user is not None else None
        if stored is None:
            # Unknown user: still run one scrypt check so timing does not reveal which names exist.
            stored = await self._get_dummy_hash()
        verified = await loop.run_in_executor(None, verify_password, password, stored)
        if user is None:
            log.info("api login failed: unknown user")  # no name: it may be a password typed in the wrong field
            raise ApiError(401, INVALID_CREDENTIALS)
        if not verified:
            log.info("api login failed: wrong password", user=user.name)
            raise ApiError(401, INVALID_CREDENTIALS)
        return user

    async def _get_dummy_hash(self) -> PasswordHash:
        """A hash of a random password, made once, with the cost of the configured users' hashes."""
        if self._dummy_hash is None:
            usable = [stored for stored in self._hashes_by_user.values() if stored is not None]
            n, r, p = (usable[0].n, usable[0].r, usable[0].p) if usable else (DEFAULT_N, 8, 1)
            loop = asyncio.get_running_loop()
            encoded = await loop.run_in_executor(None, lambda: hash_password(secrets.token_urlsafe(16), n=n, r=r, p=p))
            if self._dummy_hash is None:
                self._dummy_hash = parse_password_hash(encoded)
        return self._dummy_hash

    # ---- tokens -------------------------------------------------------------------------------

    async def issue_token(self, key: ApiKeyConfig, user: UserConfig) -> str:
        """A new unguessable token for `user`, valid token_ttl_s and only with `key`; returned once it is
        stored (a StoreError when it cannot be: the client gets no token that would not work)."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        digest = secret_digest(token)
        grant = TokenGrant(_key_digest(key), user, self._wall_clock() + self._token_ttl_s)
        await self._tokens.put(StoredToken(digest, grant.key_digest, user.name, grant.expires_at))
        self._remember(digest, grant)
        log.info("api token issued", key=key.name, user=user.name)
        return token

    async def check_token(self, key: ApiKeyConfig, token: str | None) -> TokenGrant:
        """The grant behind `token`; 401 when missing, unknown, issued for another key, or expired."""
        grant = await self._grant(token)
        if not hmac.compare_digest(grant.key_digest, _key_digest(key)):
            raise ApiError(401, TOKEN_WRONG_KEY)
        return grant

    async def _grant(self, token: str | None) -> TokenGrant:
        """The live grant behind `token`; 401 when missing, unknown or expired."""
        if not token:
            raise ApiError(401, MISSING_TOKEN)
        digest = secret_digest(token)  # looked up by hash: lookup timing reveals nothing usable
        grant = self._grants_by_digest.get(digest)
        if grant is None:
            grant = await self._load(digest)
        else:
            self._grants_by_digest.move_to_end(digest)
        if self._wall_clock() >= grant.expires_at:
            self._grants_by_digest.pop(digest, None)
            raise ApiError(401, EXPIRED_TOKEN)
        return grant

    async def _load(self, digest: bytes) -> TokenGrant:
        """The grant the token store holds (issued here before a restart, or by another gateway); 401 when
        there is none, or its user is no longer configured. A StoreError goes to the caller (503)."""
        stored = await self._tokens.get(digest)
        user = self._users_by_name.get(stored.user) if stored is not None else None
        if stored is None or user is None:
            raise ApiError(401, INVALID_TOKEN)
        grant = TokenGrant(stored.key_digest, user, stored.expires_at)
        if self._wall_clock() < grant.expires_at:
            self._remember(digest, grant)
        return grant

    def _remember(self, digest: bytes, grant: TokenGrant) -> None:
        grants = self._grants_by_digest
        grants[digest] = grant
        grants.move_to_end(digest)
        while len(grants) > self._grant_cache_size:
            grants.popitem(last=False)

    # ---- Authorization header -----------------------------------------------------------------

    @staticmethod
    def parse_basic_auth(header: str | None) -> tuple[str, str] | None:
        """(user, password) from `Basic base64(user:password)`; None for no header or another scheme."""
        if not header:
            return None
        scheme, _, credentials = header.strip().partition(" ")
        if scheme.lower() != BASIC_SCHEME:
            return None
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
        except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
            raise ApiError(401, MALFORMED_AUTHORIZATION) from None
        user_name, colon, password = decoded.partition(":")
        if not colon:
            raise ApiError(401, MALFORMED_AUTHORIZATION)
        return user_name, password

    @staticmethod
    def bearer_token(header: str | None) -> str | None:
        """The token of `Authorization: Bearer <token>` (scheme in any case), else None."""
        if not header:
            return None
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != BEARER_SCHEME:
            return None
        return token.strip() or None

    # ---- per-request checks -------------------------------------------------------------------

    async def authenticate(
        self, *, api_key: str | None, token: str | None, authorization: str | None, remote: str | None
    ) -> Principal:
        """The check for every action but RequestToken: key, network, then the token if needed or given."""
        key = self.find_key(api_key)
        await self.check_network(key, remote)
        supplied = token or self.bearer_token(authorization)
        if not supplied and not key.require_token:
            return Principal(key, None)
        grant = await self.check_token(key, supplied)  # a token that is given must be valid, required or not
        return Principal(key, grant.user)

    async def authenticate_operator(
        self, *, api_key: str | None, token: str | None, authorization: str | None, remote: str | None
    ) -> Principal:
        """The check for the operator pages (`/status`, `/events`, `/links/…`): an API key (parameter or
        `X-Api-Key` header) under its network rules — with its token when the key requires one — or a token
        alone, which stands for the key it was issued for."""
        supplied = token or self.bearer_token(authorization)
        if api_key or not supplied:
            return await self.authenticate(api_key=api_key, token=token, authorization=authorization, remote=remote)
        grant = await self._grant(supplied)
        key = self._key_of(grant)
        await self.check_network(key, remote)
        return Principal(key, grant.user)

    def _key_of(self, grant: TokenGrant) -> ApiKeyConfig:
        found: ApiKeyConfig | None = None
        for _, key_digest, key in self._keys:  # every key, no early exit
            if hmac.compare_digest(grant.key_digest, key_digest):
                found = key
        if found is None:  # the key was removed from the configuration since the token was issued
            raise ApiError(401, INVALID_TOKEN)
        return found

    async def request_token(
        self,
        *,
        api_key: str | None,
        user_name: str | None,
        password: str | None,
        authorization: str | None,
        remote: str | None,
    ) -> str:
        """RequestToken: key, network, credentials (Basic header, else userName/password) → a new token."""
        key = self.find_key(api_key)
        await self.check_network(key, remote)
        basic = self.parse_basic_auth(authorization)
        if basic is not None:
            user_name, password = basic
        user = await self.verify_user(user_name, password)
        return await self.issue_token(key, user)
