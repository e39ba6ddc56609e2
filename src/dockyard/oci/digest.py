"""Content digests: ``algorithm:hex``, sha256 and sha512."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from dockyard.oci.errors import DigestInvalid

# The OCI image spec grammar, restricted to the algorithms registries must verify.
_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"^(sha256|sha512):([a-f0-9]+)$")
# Any syntactically valid digest (for references to content we do not verify).
_ANY_DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")

SUPPORTED_ALGORITHMS = tuple(_HEX_LENGTH)


@dataclass(frozen=True, slots=True)
class Digest:
    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    def hasher(self) -> hashlib._Hash:
        return hashlib.new(self.algorithm)


def parse_digest(value: str) -> Digest:
    """Parse and validate a digest the registry can verify, or raise ``DigestInvalid``."""
    match = _DIGEST_RE.fullmatch(value)
    if match is None:
        if _ANY_DIGEST_RE.fullmatch(value):
            raise DigestInvalid(
                f"unsupported digest algorithm in {value[:80]!r}; use sha256 or sha512",
                detail={"digest": value[:200]},
            )
        raise DigestInvalid(f"invalid digest {value[:80]!r}", detail={"digest": value[:200]})
    algorithm, hex_part = match.groups()
    if len(hex_part) != _HEX_LENGTH[algorithm]:
        raise DigestInvalid(
            f"invalid {algorithm} digest: expected {_HEX_LENGTH[algorithm]} hex characters",
            detail={"digest": value[:200]},
        )
    return Digest(algorithm, hex_part)


def is_digest(value: str) -> bool:
    """True when ``value`` looks like a digest (as opposed to a tag)."""
    return ":" in value


def is_valid_digest(value: str) -> bool:
    try:
        parse_digest(value)
    except DigestInvalid:
        return False
    return True


def compute_digest(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
