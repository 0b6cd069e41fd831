"""SQLite as llamita keeps it (the web chat's store, document collections): one connection per
call (callers run in threads, and sqlite3 connections are not shared between them), WAL so
readers never wait for the writer, every write in one transaction that takes the write lock at
once, and a schema created or upgraded in place, one transaction per step, versioned by
`PRAGMA user_version`."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection with rows by name, foreign keys on and no implicit transactions."""
    # isolation_level=None: no implicit transactions; writes open their own (transaction()).
    db = sqlite3.connect(path, timeout=10, isolation_level=None)
    try:
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA foreign_keys=ON")
        # With WAL, NORMAL loses no committed transaction when the process dies (only, at
        # worst, the last ones on a power cut), and the file stays consistent.
        db.execute("PRAGMA synchronous=NORMAL")
        yield db
    finally:
        db.close()


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """Everything in the block commits together or not at all."""
    db.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlock between writers
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


@contextmanager
def write(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection whose whole block is one transaction."""
    with connect(path) as db, transaction(db):
        yield db


def prepare(
    path: Path, schema: str, version: int, migrations: Mapping[int, str], too_new: Callable[[int], Exception]
) -> None:
    """Switches the file to WAL and brings its schema to `version`: a new file gets `schema`;
    an older one each step of `migrations` (version -> SQL taking the one before to it); a
    newer one raises too_new(found version)."""
    with connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the database file
        found = db.execute("PRAGMA user_version").fetchone()[0]
        if found == 0:
            # One transaction: the tables and the version appear together or not at all.
            db.executescript(f"BEGIN IMMEDIATE;{schema}PRAGMA user_version={version};COMMIT;")
        elif found > version:
            raise too_new(found)
        for step in range(found + 1, version + 1) if found else ():
            db.executescript(f"BEGIN IMMEDIATE;{migrations[step]}PRAGMA user_version={step};COMMIT;")
