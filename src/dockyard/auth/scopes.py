"""Resource scopes as the Docker token specification writes them.

``repository:team/app:pull,push``, ``repository(plugin):x:pull``, ``registry:catalog:*``;
a resource name may carry a ``host:port/`` prefix, so the actions are what follows the
last colon, and the type is what precedes the first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TYPE_RE = re.compile(r"^[a-z0-9]+(?:\([a-z0-9]+\))?$")
_ACTION_RE = re.compile(r"^(?:[a-z]*|\*)$")


@dataclass(frozen=True, slots=True)
class Scope:
    type: str
    name: str
    actions: frozenset[str]

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(sorted(self.actions))}"

    def to_claim(self) -> dict[str, object]:
        return {"type": self.type, "name": self.name, "actions": sorted(self.actions)}


def parse_scope(text: str) -> Scope | None:
    """One resource scope, or None when it does not follow the grammar."""
    resource_type, sep, rest = text.partition(":")
    if not sep or not _TYPE_RE.fullmatch(resource_type):
        return None
    name, sep, actions_text = rest.rpartition(":")
    if not sep or not name or len(name) > 512:
        return None
    actions = frozenset(a for a in actions_text.split(",") if a)
    if not all(_ACTION_RE.fullmatch(a) for a in actions):
        return None
    return Scope(resource_type, name, actions)


def parse_scopes(values: list[str]) -> list[Scope]:
    """Every well-formed scope in the ``scope`` parameters (each may list several, space
    separated); malformed ones are ignored, as an authorization server may."""
    merged: dict[tuple[str, str], set[str]] = {}
    for value in values:
        for part in value.split():
            scope = parse_scope(part)
            if scope is not None:
                merged.setdefault((scope.type, scope.name), set()).update(scope.actions)
    return [Scope(t, n, frozenset(a)) for (t, n), a in merged.items()]
