"""Password hashes for API users: salted scrypt with its parameters inside the hash string."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

SCHEME = "scrypt"
# n=2**14, r=8, p=1 is the interactive-login setting recommended for scrypt: ~50 ms and 16 MiB per check.
DEFAULT_N = 2**14
DEFAULT_R = 8
DEFAULT_P = 1
SALT_BYTES = 16
DIGEST_BYTES = 32
MAX_N = 2**20  # refuses hashes that would make every login a denial of service


@dataclass(frozen=True, slots=True)
class PasswordHash:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    def encode(self) -> str:
        salt = base64.b64encode(self.salt).decode()
        digest = base64.b64encode(self.digest).decode()
        return f"{SCHEME}$n={self.n},r={self.r},p={self.p}${salt}${digest}"


def _derive(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=length)


def hash_password(password: str, *, n: int = DEFAULT_N, r: int = DEFAULT_R, p: int = DEFAULT_P) -> str:
    salt = secrets.token_bytes(SALT_BYTES)
    return PasswordHash(n, r, p, salt, _derive(password, salt, n, r, p, DIGEST_BYTES)).encode()


def parse_password_hash(encoded: str) -> PasswordHash:
    """Parse `scrypt$n=…,r=…,p=…$<salt b64>$<digest b64>`; ValueError says what is wrong."""
    parts = encoded.split("$")
    if len(parts) != 4 or parts[0] != SCHEME:
        raise ValueError("not a password hash from `gateway hash-password` (expected scrypt$n=…,r=…,p=…$salt$hash)")
    try:
        params = dict(item.split("=", 1) for item in parts[1].split(","))
        n, r, p = int(params["n"]), int(params["r"]), int(params["p"])
    except (ValueError, KeyError):
        raise ValueError("scrypt parameters must be n=…,r=…,p=…") from None
    if n < 2 or n & (n - 1) or n > MAX_N or not 1 <= r <= 64 or not 1 <= p <= 16:
        raise ValueError("scrypt parameters out of range")
    try:
        salt = base64.b64decode(parts[2], validate=True)
        digest = base64.b64decode(parts[3], validate=True)
    except ValueError:
        raise ValueError("salt and hash must be base64") from None
    if len(salt) < 8 or len(digest) < 16:
        raise ValueError("salt or hash too short")
    return PasswordHash(n, r, p, salt, digest)


def verify_password(password: str, encoded: str | PasswordHash) -> bool:
    """Constant-time check of a password against its hash. CPU-heavy: call it off the event loop."""
    stored = parse_password_hash(encoded) if isinstance(encoded, str) else encoded
    candidate = _derive(password, stored.salt, stored.n, stored.r, stored.p, len(stored.digest))
    return hmac.compare_digest(candidate, stored.digest)
