"""Paginated listings: tags of a repository, repositories of the registry (catalog)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection

from dockyard.db import repositories as repo_db
from dockyard.db import tags as tag_db
from dockyard.oci.errors import PaginationNumberInvalid
from dockyard.registry.context import Context
from dockyard.registry.repositories import require_id


@dataclass(frozen=True, slots=True)
class Page:
    items: list[str]
    more: bool  # another page follows: link to it with last=items[-1]


def parse_page_size(value: str | None, maximum: int) -> int | None:
    """``n`` as the spec defines it: absent means everything (up to the maximum)."""
    if value is None or value == "":
        return None
    if not value.isdigit():
        raise PaginationNumberInvalid(f"n must be a non-negative integer, got {value[:40]!r}")
    number = int(value)
    if number > maximum:
        raise PaginationNumberInvalid(f"n must be at most {maximum}", detail={"n": number})
    return number


class Listings:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def tags(self, name: str, n: int | None, last: str | None) -> Page:
        def query(conn: Connection) -> list[str]:
            repository_id = require_id(conn, name)
            return tag_db.list_names(conn, repository_id, last, _fetch(n, self.ctx))

        return _page(await self.ctx.read(query), n)

    async def catalog(self, n: int | None, last: str | None) -> Page:
        def query(conn: Connection) -> list[str]:
            return repo_db.list_names(conn, last, _fetch(n, self.ctx))

        return _page(await self.ctx.read(query), n)


def _fetch(n: int | None, ctx: Context) -> int:
    """One more row than asked for, to know whether another page follows."""
    return (ctx.limits.max_page_size if n is None else n) + 1


def _page(rows: list[str], n: int | None) -> Page:
    if n is None:
        return Page(rows, False)
    if n == 0:  # the spec: an empty list and no Link header
        return Page([], False)
    return Page(rows[:n], len(rows) > n)
