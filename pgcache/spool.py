"""Ledger rows kept while the database cannot take them, in memory and in an append-only file.

The ledger writer hands a batch it could not write to :class:`Spool` and replays the spool
once the database answers again. Each batch is one JSON line in a file of this process
(``ledger-<pid>-<random>.jsonl``, in the spool directory's folder for that database), flushed
at once and fsynced at most a second later, so that a crashed process loses at most its last
second of rows; the next process writing to the same database adopts the files of processes
that are gone (their files are no longer locked) and replays them too. Replays are idempotent
(see :mod:`pgcache.ledger`), so a batch written twice counts once.

The spool holds at most ``max_rows`` rows: beyond that a batch is dropped and counted in
:attr:`Spool.overflow`, so a long outage costs bounded memory and disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import fields
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from .ledger_rows import Judgement, LookupRecord

_log = logging.getLogger(__name__)

SYNC_INTERVAL = 1.0
"""Seconds at most between appending a batch to the file and forcing it to disk."""
Batch = list[LookupRecord | Judgement]


def default_spool_dir() -> Path:
    """Where spool files go unless configured: beside the embedded database's default data directory."""
    import platformdirs

    return platformdirs.user_data_path("pgcache") / "ledger-spool"


def spool_dir_for(base: Path, database: str) -> Path:
    """The folder under ``base`` for one database (its URL without the password, or the embedded
    server's data directory): rows are only ever adopted by a process writing to the same database."""
    return base / hashlib.sha256(database.encode("utf-8", "replace")).hexdigest()[:16]


class Spool:
    """Batches waiting for the database: in memory, and in this process's file under ``directory``.

    ``directory`` None keeps them in memory only (lost with the process).
    """

    def __init__(self, directory: Path | None, max_rows: int) -> None:
        self.directory = directory
        self.max_rows = max_rows
        self.overflow = 0
        """Rows dropped because the spool was full."""
        self._batches: list[Batch] = []
        self._rows = 0
        self._file: IO[str] | None = None
        self._path: Path | None = None
        self._synced_at = 0.0
        self._dirty = False
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._rows

    def add(self, batch: Batch) -> None:
        """Keep ``batch`` until it can be written; dropped (and counted) when the spool is full."""
        with self._lock:
            if self._rows + len(batch) > self.max_rows:
                if not self.overflow:
                    _log.warning("pgcache: ledger spool full (%d rows): later rows are dropped and counted", self._rows)
                self.overflow += len(batch)
                return
            self._batches.append(batch)
            self._rows += len(batch)
            self._append(batch)

    def batches(self) -> Iterator[Batch]:
        """The spooled batches, oldest first."""
        with self._lock:
            pending = list(self._batches)
        yield from pending

    def written(self, count: int) -> None:
        """The first ``count`` batches reached the database: forget them (and the file once empty)."""
        with self._lock:
            done, self._batches = self._batches[:count], self._batches[count:]
            self._rows -= sum(len(batch) for batch in done)
            if not self._batches and self._file is not None:
                self._file.seek(0)
                self._file.truncate()
                self._file.flush()
                self._dirty = True

    def sync(self) -> None:
        """Force appended batches to disk if the last time was a second or more ago."""
        with self._lock:
            if self._dirty and self._file is not None and time.monotonic() - self._synced_at >= SYNC_INTERVAL:
                self._fsync()

    def close(self) -> None:
        """Force the file to disk and let it go: emptied, it is removed; else the next process adopts it."""
        with self._lock:
            if self._file is None:
                return
            self._fsync()
            empty = not self._batches
            self._file.close()
            self._file = None
            if empty and self._path is not None:
                with contextlib.suppress(OSError):
                    self._path.unlink()

    # -- the file ------------------------------------------------------------------------------------

    def _append(self, batch: Batch) -> None:
        if self.directory is None:
            return
        try:
            handle = self._open()
            handle.write(json.dumps([_encode(row) for row in batch], separators=(",", ":")) + "\n")
            handle.flush()  # in the operating system: a crash of this process loses nothing from here
            self._dirty = True
        except OSError as exc:
            _log.warning("pgcache: ledger spool file unavailable (%s); rows are kept in memory only", exc)

    def _open(self) -> IO[str]:
        if self._file is None:
            assert self.directory is not None
            self.directory.mkdir(parents=True, exist_ok=True)
            self._path = self.directory / f"ledger-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
            handle = open(self._path, "a+", encoding="utf-8")  # noqa: SIM115 - kept open while spooling
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held while this process lives
            self._file = handle
        return self._file

    def _fsync(self) -> None:
        assert self._file is not None
        with contextlib.suppress(OSError):
            os.fsync(self._file.fileno())
        self._synced_at = time.monotonic()
        self._dirty = False

    def adopt(self) -> None:
        """Take over the files of processes that are gone (no longer locked): their batches join this spool."""
        if self.directory is None or not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("ledger-*.jsonl")):
            if path == self._path:
                continue
            batches = _take_over(path)
            for batch in batches:
                self.add(batch)
            if batches:
                _log.info("pgcache: %d ledger batches of an earlier process found in %s", len(batches), path)


def _take_over(path: Path) -> list[Batch]:
    """The batches of ``path`` if no live process holds it, the file then removed; else none."""
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError:
        return []
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return []  # its process is alive and spooling
        batches = []
        for number, line in enumerate(handle, 1):
            try:
                batches.append([_decode(row) for row in json.loads(line)])
            except (ValueError, KeyError, TypeError) as exc:
                # A line cut short by a crash: the rows before it are kept.
                _log.warning("pgcache: ledger spool %s line %d unreadable (%s): skipped", path, number, exc)
        path.unlink(missing_ok=True)
    return batches


def _encode(row: LookupRecord | Judgement) -> dict[str, Any]:
    values: dict[str, Any] = {"kind": "lookup" if isinstance(row, LookupRecord) else "judgement"}
    for field in fields(row):
        value = getattr(row, field.name)
        if isinstance(value, uuid.UUID):
            value = str(value)
        elif isinstance(value, datetime):
            value = value.isoformat()
        values[field.name] = value
    return values


def _decode(values: dict[str, Any]) -> LookupRecord | Judgement:
    kind = values.pop("kind")
    cls = LookupRecord if kind == "lookup" else Judgement
    for name in ("id", "lookup_id"):
        if values.get(name) is not None:
            values[name] = uuid.UUID(values[name])
    values["at"] = datetime.fromisoformat(values["at"])
    return cls(**values)
