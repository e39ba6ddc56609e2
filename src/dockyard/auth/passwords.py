"""Password and secret hashing (argon2id), and constant-time comparison."""

from __future__ import annotations

import functools
import hmac
import secrets

import bcrypt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """A hash of a random secret, verified against when the user does not exist, so that a
    login for an unknown name takes as long as one for a known name (made on first use: a
    hash costs as much as a login, and most processes never need one)."""
    return _hasher.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    if stored_hash is not None and stored_hash.startswith(("$2y$", "$2a$", "$2b$")):
        # bcrypt, as imported from a registry:2 htpasswd file
        try:
            return bcrypt.checkpw(
                password.encode(), stored_hash.replace("$2y$", "$2b$", 1).encode()
            )
        except ValueError:
            return False
    try:
        return _hasher.verify(stored_hash or _dummy_hash(), password) and stored_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    return _hasher.check_needs_rehash(stored_hash)


def new_secret(nbytes: int = 32) -> str:
    """A random secret for robots, access tokens and generated passwords."""
    return secrets.token_urlsafe(nbytes)


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
