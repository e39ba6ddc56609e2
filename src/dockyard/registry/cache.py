"""A per-process cache of hot reads (manifest and blob lookups), dropped whole whenever
the database changes."""

from __future__ import annotations

from typing import Any

from dockyard.db.changes import Generation


class ReadCache:
    def __init__(self, watcher: Generation, max_entries: int = 50_000) -> None:
        self._watcher = watcher
        self._max = max_entries
        self._token: int | None = None
        self._entries: dict[Any, Any] = {}

    def get(self, key: Any) -> Any:
        """The cached value, or None; never a value read before the latest commit."""
        token = self._watcher.token()
        if token is None:
            return None
        if token != self._token:
            self._entries.clear()
            self._token = token
            return None
        return self._entries.get(key)

    def put(self, key: Any, value: Any, token: int | None) -> None:
        """Cache ``value`` read under ``token`` (taken before the read began)."""
        if token is None or token != self._token:
            return
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[key] = value

    def close(self) -> None:
        self._watcher.close()

    def token(self) -> int | None:
        token = self._watcher.token()
        if token != self._token:
            self._entries.clear()
            self._token = token
        return token
