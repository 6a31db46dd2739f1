"""API authentication: keys, network restrictions, users, tokens, Authorization headers."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import ipaddress
import socket
from collections.abc import Callable
from zoneinfo import ZoneInfo

import pytest
import structlog.testing

from gateway.api.auth import Authenticator, Principal
from gateway.config import ApiConfig, ApiKeyConfig, UserConfig
from gateway.errors import ApiError, StoreError
from gateway.passwords import hash_password
from gateway.tokens import MemoryTokenStore, StoredToken, secret_digest

OPEN_KEY = ApiKeyConfig(key="74c8eea0-50c6-40b2-9f3e-252ed501c3c8", name="crm")
TOKEN_KEY = ApiKeyConfig(key="0a1b2c3d-0000-4000-8000-00000000abcd", name="compliance", require_token=True)
OTHER_KEY = ApiKeyConfig(key="11111111-2222-4333-8444-555555555555", name="desktop")
TOKEN_TTL_S = 3600


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def users() -> tuple[UserConfig, UserConfig]:
    return (
        UserConfig(name="alice", password_hash=hash_password("pw", n=2**4), timezone="Europe/Budapest"),
        UserConfig(name="bob", password_hash=hash_password("secret", n=2**4)),
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _api(users: tuple[UserConfig, ...], *keys: ApiKeyConfig) -> ApiConfig:
    return ApiConfig(token_ttl_s=TOKEN_TTL_S, keys=keys or (OPEN_KEY, TOKEN_KEY, OTHER_KEY), users=users)


@pytest.fixture
def token_store() -> MemoryTokenStore:
    return MemoryTokenStore()


@pytest.fixture
def auth(users: tuple[UserConfig, UserConfig], clock: FakeClock, token_store: MemoryTokenStore) -> Authenticator:
    return Authenticator(_api(users), tokens=token_store, clock=clock, wall_clock=clock)


def _restricted(*networks: ipaddress.IPv4Network | ipaddress.IPv6Network | str) -> ApiKeyConfig:
    return ApiKeyConfig(key="99999999-aaaa-4bbb-8ccc-dddddddddddd", name="restricted", networks=networks)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# ---- keys --------------------------------------------------------------------------------------


@pytest.mark.parametrize("given", [OPEN_KEY.key, OPEN_KEY.key.upper(), "74C8eea0-50c6-40B2-9f3e-252ED501c3c8"])
def test_find_key_any_case(auth: Authenticator, given: str) -> None:
    assert auth.find_key(given) is OPEN_KEY


def test_find_key_finds_each_key(auth: Authenticator) -> None:
    for key in (OPEN_KEY, TOKEN_KEY, OTHER_KEY):
        assert auth.find_key(key.key) is key


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (None, "Missing parameter 'apiKey'"),
        ("", "Missing parameter 'apiKey'"),
        ("74c8eea0-50c6-40b2-9f3e-252ed501c3c9", "Invalid API key"),
        ("74c8eea0", "Invalid API key"),
        ("ünïcode-\ud800", "Invalid API key"),
    ],
)
def test_find_key_rejects(auth: Authenticator, given: str | None, message: str) -> None:
    with pytest.raises(ApiError) as caught:
        auth.find_key(given)
    assert caught.value.http_status == 401
    assert caught.value.message == message


# ---- networks ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("networks", "remote"),
    [
        ((ipaddress.ip_network("192.0.2.10"),), "192.0.2.10"),
        ((ipaddress.ip_network("10.0.0.0/8"),), "10.20.30.40"),
        ((ipaddress.ip_network("::1"),), "::1"),
        ((ipaddress.ip_network("2001:db8::/32"),), "2001:db8::5"),
        ((ipaddress.ip_network("fe80::/10"),), "fe80::1%eth0"),
        ((ipaddress.ip_network("127.0.0.1"),), "::ffff:127.0.0.1"),
        ((ipaddress.ip_network("::ffff:10.0.0.0/104"),), "::ffff:10.1.2.3"),
        ((ipaddress.ip_network("2001:db8::/32"), ipaddress.ip_network("10.0.0.0/8")), "10.0.0.1"),
        (("localhost",), "127.0.0.1"),
        (("localhost",), "::ffff:127.0.0.1"),
    ],
)
async def test_network_allowed(auth: Authenticator, networks: tuple, remote: str) -> None:
    await auth.check_network(_restricted(*networks), remote)


@pytest.mark.parametrize(
    ("networks", "remote"),
    [
        ((ipaddress.ip_network("192.0.2.10"),), "192.0.2.11"),
        ((ipaddress.ip_network("10.0.0.0/8"),), "11.0.0.1"),
        ((ipaddress.ip_network("::1"),), "127.0.0.1"),
        ((ipaddress.ip_network("127.0.0.1"),), "::1"),
        ((ipaddress.ip_network("10.0.0.0/8"),), "::ffff:11.0.0.1"),
        ((ipaddress.ip_network("10.0.0.0/8"),), None),
        ((ipaddress.ip_network("10.0.0.0/8"),), "not-an-address"),
        (("localhost",), "192.0.2.1"),
        ((), "127.0.0.1"),
    ],
)
async def test_network_refused(auth: Authenticator, networks: tuple, remote: str | None) -> None:
    with pytest.raises(ApiError) as caught:
        await auth.check_network(_restricted(*networks), remote)
    assert caught.value.http_status == 403
    assert caught.value.message == "Access from this address is not allowed for this API key"


@pytest.mark.parametrize("remote", ["127.0.0.1", "2001:db8::1", "::ffff:8.8.8.8", None, "garbage"])
async def test_no_networks_means_any_address(auth: Authenticator, remote: str | None) -> None:
    await auth.check_network(OPEN_KEY, remote)


class FakeResolver:
    """Stands in for the event loop's getaddrinfo: name → addresses; unknown names do not resolve."""

    def __init__(self) -> None:
        self.answers: dict[str, list[str]] = {}
        self.calls: list[str] = []

    async def getaddrinfo(self, loop, host, port, **kwargs):  # type: ignore[no-untyped-def]
        self.calls.append(host)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, 0))
            for address in self.answers[host]
        ]


@pytest.fixture
def fake_resolver(monkeypatch: pytest.MonkeyPatch) -> FakeResolver:
    resolver = FakeResolver()

    async def getaddrinfo(loop, host, port, **kwargs):  # type: ignore[no-untyped-def]
        return await resolver.getaddrinfo(loop, host, port, **kwargs)

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", getaddrinfo)
    return resolver


async def test_unresolvable_host_name_refuses_and_warns_once(
    auth: Authenticator, fake_resolver: FakeResolver, clock: FakeClock
) -> None:
    key = _restricted("nonexistent.invalid")
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            with pytest.raises(ApiError) as caught:
                await auth.check_network(key, "127.0.0.1")
            assert caught.value.http_status == 403
            clock.now += 61  # past the cache: every attempt resolves again
    warnings = [entry for entry in logs if entry["log_level"] == "warning"]
    assert len(warnings) == 1 and warnings[0]["host"] == "nonexistent.invalid"
    assert fake_resolver.calls == ["nonexistent.invalid"] * 3


async def test_unresolvable_host_name_with_the_real_resolver(auth: Authenticator) -> None:
    with pytest.raises(ApiError) as caught:
        await auth.check_network(_restricted("nonexistent.invalid"), "127.0.0.1")
    assert caught.value.http_status == 403


async def test_resolved_addresses_are_cached_for_the_ttl(
    auth: Authenticator, fake_resolver: FakeResolver, clock: FakeClock
) -> None:
    fake_resolver.answers["pbx.example"] = ["192.0.2.7", "2001:db8::7%3"]
    key = _restricted("pbx.example")
    await auth.check_network(key, "192.0.2.7")
    await auth.check_network(key, "2001:db8::7")
    assert fake_resolver.calls == ["pbx.example"]

    fake_resolver.answers["pbx.example"] = ["192.0.2.8"]  # the name moves; the cache still holds the old set
    clock.now += 59
    await auth.check_network(key, "192.0.2.7")
    assert fake_resolver.calls == ["pbx.example"]

    clock.now += 2  # past 60 s: resolved again
    with pytest.raises(ApiError) as caught:
        await auth.check_network(key, "192.0.2.7")
    assert caught.value.http_status == 403
    await auth.check_network(key, "192.0.2.8")
    assert fake_resolver.calls == ["pbx.example"] * 2


async def test_address_entries_match_without_resolving(auth: Authenticator, fake_resolver: FakeResolver) -> None:
    await auth.check_network(_restricted("pbx.example", ipaddress.ip_network("10.0.0.0/8")), "10.1.1.1")
    assert fake_resolver.calls == []


async def test_concurrent_checks_share_one_lookup(auth: Authenticator, fake_resolver: FakeResolver) -> None:
    fake_resolver.answers["pbx.example"] = ["192.0.2.7"]
    key = _restricted("pbx.example")
    await asyncio.gather(*(auth.check_network(key, "192.0.2.7") for _ in range(5)))
    assert fake_resolver.calls == ["pbx.example"]


# ---- users -------------------------------------------------------------------------------------


async def test_verify_user_right_password(auth: Authenticator, users: tuple[UserConfig, UserConfig]) -> None:
    assert await auth.verify_user("alice", "pw") is users[0]
    assert await auth.verify_user("bob", "secret") is users[1]


@pytest.mark.parametrize(
    ("user_name", "password", "message"),
    [
        ("alice", "wrong", "Invalid user name or password"),
        ("alice", "secret", "Invalid user name or password"),  # bob's password
        ("mallory", "pw", "Invalid user name or password"),
        ("Alice", "pw", "Invalid user name or password"),
        (None, "pw", "Missing user credentials"),
        ("alice", None, "Missing user credentials"),
        ("", "", "Missing user credentials"),
    ],
)
async def test_verify_user_rejects(
    auth: Authenticator, user_name: str | None, password: str | None, message: str
) -> None:
    with pytest.raises(ApiError) as caught:
        await auth.verify_user(user_name, password)
    assert caught.value.http_status == 401
    assert caught.value.message == message


async def test_unknown_user_still_runs_one_scrypt_check(auth: Authenticator, monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.api.auth as auth_module

    checked: list[int] = []
    real_verify = auth_module.verify_password

    def counting_verify(password, stored):  # type: ignore[no-untyped-def]
        checked.append(stored.n)
        return real_verify(password, stored)

    monkeypatch.setattr(auth_module, "verify_password", counting_verify)
    for _ in range(2):
        with pytest.raises(ApiError):
            await auth.verify_user("mallory", "pw")
    assert checked == [2**4, 2**4]  # same cost as the configured users' hashes
    assert auth._dummy_hash is not None


async def test_logs_never_carry_secrets(auth: Authenticator, clock: FakeClock) -> None:
    with structlog.testing.capture_logs() as logs:
        token = await auth.request_token(
            api_key=TOKEN_KEY.key, user_name="alice", password="pw", authorization=None, remote="127.0.0.1"
        )
        with pytest.raises(ApiError):
            await auth.verify_user("alice", "wrong-pw")
        with pytest.raises(ApiError):
            await auth.verify_user("pw-typed-as-name", "x")
        with pytest.raises(ApiError):
            await auth.check_network(_restricted(ipaddress.ip_network("10.0.0.0/8")), "127.0.0.1")
    text = repr(logs)
    assert logs
    for secret in (token, TOKEN_KEY.key, "wrong-pw", "pw-typed-as-name", "scrypt$"):
        assert secret not in text


# ---- tokens ------------------------------------------------------------------------------------


async def test_issue_and_check_token(
    auth: Authenticator, users: tuple[UserConfig, UserConfig], clock: FakeClock
) -> None:
    token = await auth.issue_token(TOKEN_KEY, users[0])
    assert len(token) >= 43  # 32 bytes urlsafe base64
    assert token != await auth.issue_token(TOKEN_KEY, users[0])
    grant = await auth.check_token(TOKEN_KEY, token)
    assert grant.user is users[0]
    assert grant.key_digest == hashlib.sha256(TOKEN_KEY.key.lower().encode()).digest()
    assert grant.expires_at == clock.now + TOKEN_TTL_S


async def test_token_expires(auth: Authenticator, users: tuple[UserConfig, UserConfig], clock: FakeClock) -> None:
    token = await auth.issue_token(TOKEN_KEY, users[0])
    clock.now += TOKEN_TTL_S - 0.001
    await auth.check_token(TOKEN_KEY, token)
    clock.now += 0.001
    with pytest.raises(ApiError) as caught:
        await auth.check_token(TOKEN_KEY, token)
    assert (caught.value.http_status, caught.value.message) == (401, "Token expired")
    assert not auth._grants_by_digest  # an expired grant leaves the cache


async def test_token_for_another_key(auth: Authenticator, users: tuple[UserConfig, UserConfig]) -> None:
    token = await auth.issue_token(TOKEN_KEY, users[0])
    with pytest.raises(ApiError) as caught:
        await auth.check_token(OTHER_KEY, token)
    assert (caught.value.http_status, caught.value.message) == (401, "Token is not valid for this API key")


TAMPERINGS = [lambda t: t[:-1], lambda t: t + "A", lambda t: t[::-1], lambda t: t.upper(), lambda t: "x" * 43]


@pytest.mark.parametrize("mutate", TAMPERINGS)
async def test_tampered_token(
    auth: Authenticator, users: tuple[UserConfig, UserConfig], mutate: Callable[[str], str]
) -> None:
    token = await auth.issue_token(TOKEN_KEY, users[0])
    with pytest.raises(ApiError) as caught:
        await auth.check_token(TOKEN_KEY, mutate(token))
    assert (caught.value.http_status, caught.value.message) == (401, "Invalid token")


@pytest.mark.parametrize("token", [None, ""])
async def test_missing_token(auth: Authenticator, token: str | None) -> None:
    with pytest.raises(ApiError) as caught:
        await auth.check_token(TOKEN_KEY, token)
    assert (caught.value.http_status, caught.value.message) == (401, "Missing parameter 'token'")


async def test_the_token_store_keeps_digests_only(
    auth: Authenticator, users: tuple[UserConfig, UserConfig], token_store: MemoryTokenStore, clock: FakeClock
) -> None:
    token = await auth.issue_token(TOKEN_KEY, users[0])
    digest = hashlib.sha256(token.encode()).digest()
    assert token_store.tokens == {
        digest: StoredToken(digest, secret_digest(TOKEN_KEY.key), "alice", clock.now + TOKEN_TTL_S)
    }
    assert token not in repr(token_store.tokens) and TOKEN_KEY.key not in repr(token_store.tokens)
    assert list(auth._grants_by_digest) == [digest]


async def test_a_token_outlives_its_authenticator(
    users: tuple[UserConfig, UserConfig], clock: FakeClock, token_store: MemoryTokenStore
) -> None:
    """A restart, or another gateway on the same store: a new Authenticator with a cold cache."""
    first = Authenticator(_api(users), tokens=token_store, clock=clock, wall_clock=clock)
    token = await first.issue_token(TOKEN_KEY, users[1])
    other = await first.issue_token(OTHER_KEY, users[1])
    second = Authenticator(_api(users), tokens=token_store, clock=clock, wall_clock=clock)
    assert (await second.check_token(TOKEN_KEY, token)).user is users[1]
    principal = await second.authenticate_operator(api_key=None, token=token, authorization=None, remote=None)
    assert principal == Principal(TOKEN_KEY, users[1])
    with pytest.raises(ApiError) as caught:
        await second.check_token(TOKEN_KEY, other)
    assert (caught.value.http_status, caught.value.message) == (401, "Token is not valid for this API key")
    clock.now += TOKEN_TTL_S
    third = Authenticator(_api(users), tokens=token_store, clock=clock, wall_clock=clock)
    with pytest.raises(ApiError) as caught:
        await third.check_token(TOKEN_KEY, token)
    assert (caught.value.http_status, caught.value.message) == (401, "Token expired")
    assert not third._grants_by_digest  # an expired grant read from the store is not cached


async def test_a_token_of_a_user_or_key_no_longer_configured_is_invalid(
    users: tuple[UserConfig, UserConfig], clock: FakeClock, token_store: MemoryTokenStore
) -> None:
    before = Authenticator(_api(users), tokens=token_store, clock=clock, wall_clock=clock)
    bobs = await before.issue_token(TOKEN_KEY, users[1])
    alices_other = await before.issue_token(OTHER_KEY, users[0])
    after = Authenticator(_api(users[:1], TOKEN_KEY), tokens=token_store, clock=clock, wall_clock=clock)
    with pytest.raises(ApiError) as caught:
        await after.check_token(TOKEN_KEY, bobs)
    assert (caught.value.http_status, caught.value.message) == (401, "Invalid token")
    with pytest.raises(ApiError) as caught:  # a token alone stands for its key, which is gone
        await after.authenticate_operator(api_key=None, token=alices_other, authorization=None, remote=None)
    assert (caught.value.http_status, caught.value.message) == (401, "Invalid token")


class CountingTokenStore(MemoryTokenStore):
    def __init__(self) -> None:
        super().__init__()
        self.gets = 0
        self.failing = False

    async def get(self, digest: bytes) -> StoredToken | None:
        self.gets += 1
        if self.failing:
            raise StoreError("store test.db is not open")
        return await super().get(digest)


async def test_valid_grants_are_cached_and_unknown_tokens_never_are(
    users: tuple[UserConfig, UserConfig], clock: FakeClock
) -> None:
    store = CountingTokenStore()
    issuer = Authenticator(_api(users), tokens=store, clock=clock, wall_clock=clock)
    tokens = [await issuer.issue_token(TOKEN_KEY, users[0]) for _ in range(5)]
    auth = Authenticator(_api(users), tokens=store, clock=clock, wall_clock=clock, grant_cache_size=3)
    for _ in range(2):
        for token in tokens[:3]:
            await auth.check_token(TOKEN_KEY, token)
    assert store.gets == 3  # one read each, then the cache
    for index in range(100):
        with pytest.raises(ApiError):
            await auth.check_token(TOKEN_KEY, f"guess-{index}")
    assert len(auth._grants_by_digest) == 3 and store.gets == 103
    await auth.check_token(TOKEN_KEY, tokens[0])  # the least recently used is now tokens[1]
    await auth.check_token(TOKEN_KEY, tokens[3])
    assert len(auth._grants_by_digest) == 3
    await auth.check_token(TOKEN_KEY, tokens[1])
    assert store.gets == 105  # tokens[1] was evicted: read again


async def test_a_store_that_cannot_answer_is_a_store_error(
    users: tuple[UserConfig, UserConfig], clock: FakeClock
) -> None:
    store = CountingTokenStore()
    token = await Authenticator(_api(users), tokens=store, clock=clock, wall_clock=clock).issue_token(
        TOKEN_KEY, users[0]
    )
    store.failing = True
    auth = Authenticator(_api(users), tokens=store, clock=clock, wall_clock=clock)
    with pytest.raises(StoreError):  # the API answers 503, not "Invalid token"
        await auth.authenticate(api_key=TOKEN_KEY.key, token=token, authorization=None, remote=None)


async def test_no_token_when_the_store_cannot_keep_it(users: tuple[UserConfig, UserConfig]) -> None:
    class FullStore(MemoryTokenStore):
        async def put(self, grant: StoredToken) -> None:
            raise StoreError("store test.db: save of an API token failed: database or disk is full")

    auth = Authenticator(_api(users), tokens=FullStore())
    with pytest.raises(StoreError):
        await auth.request_token(
            api_key=TOKEN_KEY.key, user_name="alice", password="pw", authorization=None, remote="127.0.0.1"
        )
    assert not auth._grants_by_digest


# ---- Authorization header ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (_basic("alice", "pw"), ("alice", "pw")),
        (_basic("alice", "p:w:x"), ("alice", "p:w:x")),
        (_basic("ünï", "cödé"), ("ünï", "cödé")),
        (_basic("alice", ""), ("alice", "")),
        ("basic " + base64.b64encode(b"a:b").decode(), ("a", "b")),
        ("BASIC  " + base64.b64encode(b"a:b").decode() + " ", ("a", "b")),
        (None, None),
        ("", None),
        ("Bearer abc", None),
    ],
)
def test_parse_basic_auth(header: str | None, expected: tuple[str, str] | None) -> None:
    assert Authenticator.parse_basic_auth(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        "Basic",
        "Basic !!!not-base64!!!",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:x").decode(),
    ],
)
def test_parse_basic_auth_malformed(header: str) -> None:
    with pytest.raises(ApiError) as caught:
        Authenticator.parse_basic_auth(header)
    assert (caught.value.http_status, caught.value.message) == (401, "Malformed Authorization header")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer abc-_123", "abc-_123"),
        ("bearer abc", "abc"),
        ("BEARER  abc ", "abc"),
        ("Bearer", None),
        ("Bearer ", None),
        ("Basic YTpi", None),
        ("Token abc", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, expected: str | None) -> None:
    assert Authenticator.bearer_token(header) == expected


# ---- authenticate / request_token ----------------------------------------------------------------


async def test_authenticate_key_only(auth: Authenticator) -> None:
    principal = await auth.authenticate(
        api_key=OPEN_KEY.key.upper(), token=None, authorization=None, remote="127.0.0.1"
    )
    assert principal == Principal(OPEN_KEY, None)
    assert principal.tz is datetime.timezone.utc


async def test_authenticate_key_only_with_valid_token_supplies_the_user(
    auth: Authenticator, users: tuple[UserConfig, UserConfig]
) -> None:
    token = await auth.issue_token(OPEN_KEY, users[0])
    for kwargs in ({"token": token, "authorization": None}, {"token": None, "authorization": f"Bearer {token}"}):
        principal = await auth.authenticate(api_key=OPEN_KEY.key, remote="127.0.0.1", **kwargs)
        assert principal.user is users[0]
        assert principal.tz == ZoneInfo("Europe/Budapest")


async def test_authenticate_key_only_with_bad_token_is_refused(
    auth: Authenticator, users: tuple[UserConfig, UserConfig]
) -> None:
    other = await auth.issue_token(OTHER_KEY, users[0])
    for token, message in (("bogus", "Invalid token"), (other, "Token is not valid for this API key")):
        with pytest.raises(ApiError) as caught:
            await auth.authenticate(api_key=OPEN_KEY.key, token=token, authorization=None, remote=None)
        assert (caught.value.http_status, caught.value.message) == (401, message)


async def test_authenticate_require_token(
    auth: Authenticator, users: tuple[UserConfig, UserConfig], clock: FakeClock
) -> None:
    with pytest.raises(ApiError) as caught:
        await auth.authenticate(api_key=TOKEN_KEY.key, token=None, authorization=None, remote=None)
    assert (caught.value.http_status, caught.value.message) == (401, "Missing parameter 'token'")

    token = await auth.issue_token(TOKEN_KEY, users[1])
    principal = await auth.authenticate(api_key=TOKEN_KEY.key, token=token, authorization=None, remote=None)
    assert principal.key is TOKEN_KEY and principal.user is users[1]
    assert principal.tz == ZoneInfo("UTC")
    via_header = await auth.authenticate(
        api_key=TOKEN_KEY.key, token=None, authorization=f"bearer {token}", remote=None
    )
    assert via_header.user is users[1]

    clock.now += TOKEN_TTL_S
    with pytest.raises(ApiError) as caught:
        await auth.authenticate(api_key=TOKEN_KEY.key, token=token, authorization=None, remote=None)
    assert (caught.value.http_status, caught.value.message) == (401, "Token expired")


async def test_authenticate_checks_key_and_network_first(users: tuple[UserConfig, UserConfig]) -> None:
    restricted = _restricted(ipaddress.ip_network("10.0.0.0/8"))
    auth = Authenticator(_api(users, restricted), tokens=MemoryTokenStore())
    with pytest.raises(ApiError) as caught:
        await auth.authenticate(api_key=None, token=None, authorization=None, remote="10.0.0.1")
    assert caught.value.http_status == 401
    with pytest.raises(ApiError) as caught:
        await auth.authenticate(api_key=restricted.key, token=None, authorization=None, remote="192.0.2.1")
    assert caught.value.http_status == 403
    principal = await auth.authenticate(api_key=restricted.key, token=None, authorization=None, remote="10.0.0.1")
    assert principal.user is None


async def test_request_token_via_parameters(auth: Authenticator, users: tuple[UserConfig, UserConfig]) -> None:
    token = await auth.request_token(
        api_key=TOKEN_KEY.key, user_name="alice", password="pw", authorization=None, remote="127.0.0.1"
    )
    assert (await auth.check_token(TOKEN_KEY, token)).user is users[0]


async def test_request_token_via_basic_header(auth: Authenticator, users: tuple[UserConfig, UserConfig]) -> None:
    token = await auth.request_token(
        api_key=TOKEN_KEY.key,
        user_name="alice",  # the header wins over the parameters
        password="wrong",
        authorization=_basic("bob", "secret"),
        remote="127.0.0.1",
    )
    assert (await auth.check_token(TOKEN_KEY, token)).user is users[1]


async def test_request_token_ignores_a_bearer_header(auth: Authenticator, users: tuple[UserConfig, UserConfig]) -> None:
    token = await auth.request_token(
        api_key=TOKEN_KEY.key, user_name="bob", password="secret", authorization="Bearer x", remote=None
    )
    assert (await auth.check_token(TOKEN_KEY, token)).user is users[1]


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"api_key": None, "user_name": "alice", "password": "pw"}, 401, "Missing parameter 'apiKey'"),
        ({"api_key": "bad", "user_name": "alice", "password": "pw"}, 401, "Invalid API key"),
        ({"api_key": TOKEN_KEY.key, "user_name": "alice", "password": "no"}, 401, "Invalid user name or password"),
        ({"api_key": TOKEN_KEY.key, "user_name": "eve", "password": "pw"}, 401, "Invalid user name or password"),
        ({"api_key": TOKEN_KEY.key, "user_name": None, "password": None}, 401, "Missing user credentials"),
        (
            {"api_key": TOKEN_KEY.key, "user_name": "alice", "password": "pw", "authorization": _basic("alice", "no")},
            401,
            "Invalid user name or password",
        ),
        (
            {"api_key": TOKEN_KEY.key, "user_name": "alice", "password": "pw", "authorization": "Basic %%%"},
            401,
            "Malformed Authorization header",
        ),
    ],
)
async def test_request_token_rejects(auth: Authenticator, kwargs: dict, status: int, message: str) -> None:
    kwargs = {"authorization": None, "remote": "127.0.0.1", **kwargs}
    with pytest.raises(ApiError) as caught:
        await auth.request_token(**kwargs)
    assert (caught.value.http_status, caught.value.message) == (status, message)


async def test_request_token_checks_the_network(users: tuple[UserConfig, UserConfig]) -> None:
    restricted = _restricted(ipaddress.ip_network("::1"))
    auth = Authenticator(_api(users, restricted), tokens=MemoryTokenStore())
    with pytest.raises(ApiError) as caught:
        await auth.request_token(
            api_key=restricted.key, user_name="alice", password="pw", authorization=None, remote="192.0.2.1"
        )
    assert caught.value.http_status == 403
    token = await auth.request_token(
        api_key=restricted.key, user_name="alice", password="pw", authorization=None, remote="::1"
    )
    assert (await auth.check_token(restricted, token)).user.name == "alice"
