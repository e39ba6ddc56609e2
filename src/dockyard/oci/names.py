"""Repository names and tags, as the distribution spec defines them."""

from __future__ import annotations

import re

from dockyard.oci.errors import ManifestInvalid, NameInvalid

# <name>: path components of [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)* separated by "/".
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_PATTERN = rf"{_COMPONENT}(?:/{_COMPONENT})*"
_NAME_RE = re.compile(rf"^{NAME_PATTERN}$")
TAG_PATTERN = r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}"
_TAG_RE = re.compile(rf"^{TAG_PATTERN}$")

# Distribution caps names at 255 characters (hostname included); we cap the path.
MAX_NAME_LENGTH = 255


def validate_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH:
        raise NameInvalid(
            f"repository name is longer than {MAX_NAME_LENGTH} characters",
            detail={"name": name[:300]},
        )
    if not _NAME_RE.fullmatch(name):
        raise NameInvalid(
            "invalid repository name: use lowercase letters, digits and separators "
            "(., _, __, -) in path components separated by '/'",
            detail={"name": name[:300]},
        )
    return name


def is_valid_tag(tag: str) -> bool:
    return _TAG_RE.fullmatch(tag) is not None


def validate_tag(tag: str) -> str:
    if not is_valid_tag(tag):
        raise ManifestInvalid(
            "invalid tag: up to 128 characters of [a-zA-Z0-9_.-], not starting with '.' or '-'",
            detail={"tag": tag[:200]},
        )
    return tag
