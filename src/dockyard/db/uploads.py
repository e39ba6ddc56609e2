"""Queries on upload sessions."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import Connection, delete, insert, select

from dockyard.db.schema import uploads


@dataclass(frozen=True, slots=True)
class UploadRow:
    id: str
    repository_id: int
    hash_algorithm: str
    created_at: float


def create(conn: Connection, upload_id: str, repository_id: int, hash_algorithm: str) -> None:
    conn.execute(
        insert(uploads).values(
            id=upload_id,
            repository_id=repository_id,
            hash_algorithm=hash_algorithm,
            created_at=time.time(),
        )
    )


def get(conn: Connection, upload_id: str) -> UploadRow | None:
    row = conn.execute(
        select(
            uploads.c.id, uploads.c.repository_id, uploads.c.hash_algorithm, uploads.c.created_at
        ).where(uploads.c.id == upload_id)
    ).first()
    return UploadRow(*row) if row else None


def remove(conn: Connection, upload_id: str) -> bool:
    return conn.execute(delete(uploads).where(uploads.c.id == upload_id)).rowcount > 0


def older_than(conn: Connection, cutoff: float) -> list[str]:
    return list(conn.execute(select(uploads.c.id).where(uploads.c.created_at < cutoff)).scalars())
