"""Password hashes: salted scrypt with its parameters inside the string."""

from __future__ import annotations

import pytest

from gateway.passwords import hash_password, parse_password_hash, verify_password


def test_hash_verifies_only_its_password_and_is_salted():
    first, second = hash_password("pw", n=2**4), hash_password("pw", n=2**4)
    assert first != second  # a new salt each time
    assert verify_password("pw", first) and verify_password("pw", second)
    assert not verify_password("pW", first)


def test_parameters_travel_inside_the_hash():
    encoded = hash_password("pw", n=2**5, r=4, p=2)
    parsed = parse_password_hash(encoded)
    assert (parsed.n, parsed.r, parsed.p) == (2**5, 4, 2)
    assert encoded.startswith("scrypt$n=32,r=4,p=2$")


def test_default_parameters_are_the_interactive_login_setting():
    parsed = parse_password_hash(hash_password("pw"))
    assert (parsed.n, parsed.r, parsed.p) == (2**14, 8, 1)


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "plain-password",
        "bcrypt$n=16,r=8,p=1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==",
        "scrypt$n=15,r=8,p=1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==",  # n not a power of two
        "scrypt$n=4194304,r=8,p=1$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==",  # n too large: a login DoS
        "scrypt$n=16,r=8$c2FsdHNhbHQ=$aGFzaGhhc2hoYXNoaGFzaA==",
        "scrypt$n=16,r=8,p=1$not base64!$aGFzaGhhc2hoYXNoaGFzaA==",
        "scrypt$n=16,r=8,p=1$c2FsdA==$aGFzaGhhc2hoYXNoaGFzaA==",  # salt too short
    ],
)
def test_malformed_hashes_are_refused(encoded):
    with pytest.raises(ValueError):
        parse_password_hash(encoded)
