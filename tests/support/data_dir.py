"""Checks on a Dockyard data directory at rest: blob files and the SQLite database."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

_BLOCK = 1024 * 1024


def bad_blob_files(data_dir: Path) -> list[str]:
    """Every file under ``blobs/`` whose content does not hash to its name (or that sits in
    the wrong ``<algorithm>/<first two hex>/`` directory)."""
    bad = []
    root = data_dir / "blobs"
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        algorithm = path.relative_to(root).parts[0]
        hasher = hashlib.new(algorithm)
        with open(path, "rb") as handle:
            while block := handle.read(_BLOCK):
                hasher.update(block)
        if hasher.hexdigest() != path.name or path.parent.name != path.name[:2]:
            bad.append(str(path.relative_to(data_dir)))
    return bad


def check_database(data_dir: Path) -> None:
    """``PRAGMA integrity_check`` says ok and no foreign key dangles."""
    db_file = data_dir / "dockyard.db"
    assert db_file.is_file(), f"{db_file} is missing"
    conn = sqlite3.connect(db_file, timeout=30)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        conn.close()
