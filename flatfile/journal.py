"""One project on disk: snapshot + journal, replayed into a :class:`~queue_service.state.ProjectState`.

Layout of ``<data>/projects/<slug>/``::

    snapshot-<gen>.jsonl    the whole project as of the start of generation <gen> (atomic replace)
    journal-<gen>.jsonl     one line per committed operation since that snapshot (append + fdatasync)
    lock                    flock target; held for the critical section of every operation
    missions/<id>/mission.json   derived copy of each mission (coord parity), rewritten atomically

The current generation is the highest ``snapshot-<gen>.jsonl`` present; its journal holds every
change after it. Compaction (under the exclusive lock) creates an empty ``journal-<gen+1>``, then
atomically writes ``snapshot-<gen+1>`` from the in-memory state (the rename is the commit point),
then deletes older generations. A crash anywhere in between leaves either the old pair or the new
pair current, and leftovers of the other are ignored until the next compaction deletes them.

Every process keeps its own ProjectState and the (generation, byte offset) it has replayed up to.
Each operation takes the lock, lists the directory (a new generation means: reload), reads only the
bytes appended since its offset, applies them, plans, appends its own line, fsyncs, applies it.
Bytes after the last newline are a torn, unacknowledged append of a killed writer: readers ignore
them and the next writer moves them aside (``journal-<gen>.jsonl.torn-<offset>``) and truncates.
A newline-terminated line that does not decode is damage, not a torn write: CorruptData naming the
file and line, and nothing of that project is written until it is repaired.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Generic, TypeVar

from flatfile import codec
from flatfile.atomic import append_durable, ensure_dir, fsync_dir, write_atomic
from flatfile.errors import corrupt
from flatfile.locks import FileLock
from queue_service import exceptions
from queue_service.models import Mission, validate_slug
from queue_service.state import Changes, ProjectState

__all__ = ["CompactionPolicy", "Outcome", "ProjectFiles", "Txn", "create_project_dir", "journal_name", "snapshot_name"]

logger = logging.getLogger(__name__)

R = TypeVar("R")

_SNAPSHOT_RE = re.compile(r"^snapshot-(\d{1,12})\.jsonl$")
_JOURNAL_RE = re.compile(r"^journal-(\d{1,12})\.jsonl$")
_READ_CHUNK = 1 << 20


def snapshot_name(generation: int) -> str:
    """File name of a generation's snapshot."""
    return f"snapshot-{generation:08d}.jsonl"


def journal_name(generation: int) -> str:
    """File name of a generation's journal."""
    return f"journal-{generation:08d}.jsonl"


#: first pause after a failed compaction, and the longest (seconds)
_COMPACT_BACKOFF = 5.0
_COMPACT_BACKOFF_MAX = 300.0


@dataclass(frozen=True)
class CompactionPolicy:
    """When to fold the journal into a new snapshot.

    Compaction runs once the journal holds at least ``min_entries`` lines *and* at least ``ratio``
    times the snapshot's size in bytes. The ratio keeps the amortised cost per operation flat: a
    snapshot of S bytes is rewritten only after ~ratio·S bytes of journal were appended.
    """

    min_entries: int = 1000
    ratio: float = 1.0


class Txn:
    """What an operation sees inside the lock: the caught-up state, the time, and ``commit``."""

    def __init__(self, files: ProjectFiles, state: ProjectState, now: datetime, exclusive: bool) -> None:
        self.files = files
        self.state = state
        self.now = now
        self.exclusive = exclusive
        self.committed: list[Changes] = []

    def commit(self, changes: Changes) -> None:
        """Make *changes* durable (journal line + fdatasync), then apply them. Empty changes are skipped."""
        if changes.is_empty():
            return
        if not self.exclusive:
            raise RuntimeError("commit needs the exclusive lock")
        self.files.append(changes)
        self.state.apply(changes)
        self.committed.append(changes)


@dataclass
class Outcome(Generic[R]):
    """What :meth:`ProjectFiles.run` returns: the callback's result and the changes it committed."""

    result: R
    committed: list[Changes]


def _mission_path(project_dir: Path, mission_id: str) -> Path:
    validate_slug(mission_id)  # it becomes a directory name
    return project_dir / "missions" / mission_id / "mission.json"


def _mission_bytes(mission: Mission) -> bytes:
    return mission.model_dump_json(indent=2).encode() + b"\n"


def _write_mission(project_dir: Path, mission: Mission) -> None:
    path = _mission_path(project_dir, mission.id)
    ensure_dir(path.parent)
    write_atomic(path, _mission_bytes(mission))


def create_project_dir(projects_dir: Path, state: ProjectState) -> None:
    """Create ``projects/<slug>/`` holding *state* as generation 1, atomically.

    The directory is built under a temporary name and renamed into place, so a crash leaves either
    nothing or a complete project, and two racing creators cannot both win (the loser gets
    AlreadyExists).
    """
    slug = validate_slug(state.project.slug)
    ensure_dir(projects_dir)
    final = projects_dir / slug
    if final.exists():
        raise exceptions.AlreadyExists(f"project {slug!r} already exists", project=slug)
    tmp = Path(tempfile.mkdtemp(dir=projects_dir, prefix=f".new-{slug}-"))
    try:
        write_atomic(tmp / snapshot_name(1), codec.encode_snapshot(state, 1))
        fd = os.open(tmp / journal_name(1), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.close(fd)
        for mission in state.missions.values():
            _write_mission(tmp, mission)
        fsync_dir(tmp)
        try:
            os.rename(tmp, final)
        except OSError as exc:
            if final.exists():
                raise exceptions.AlreadyExists(f"project {slug!r} already exists", project=slug) from exc
            raise
        fsync_dir(projects_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


class ProjectFiles:
    """This process's view of one project directory. Methods are blocking: run them in a thread."""

    def __init__(self, project_dir: Path, slug: str, policy: CompactionPolicy) -> None:
        self.dir = project_dir
        self.slug = slug
        self.policy = policy
        self.lock = FileLock(project_dir / "lock")
        self.state: ProjectState | None = None
        self.generation = 0
        #: bytes of the current journal replayed (always the end of a complete line)
        self.offset = 0
        #: lines of the current journal replayed (for error messages)
        self.lineno = 0
        self.snapshot_bytes = 0
        #: journal lines (and reloads) applied from disk rather than committed by this process
        self.replayed = 0
        self._fd: int | None = None
        self._fd_pid = os.getpid()
        #: after a failed compaction (disk full…), none is tried again before this monotonic time
        self._compact_not_before = 0.0
        self._compact_failures = 0

    # -- paths ------------------------------------------------------------------------------
    @property
    def journal_path(self) -> Path:
        """The current generation's journal."""
        return self.dir / journal_name(self.generation)

    def signature(self) -> tuple[object, ...]:
        """Cheap change detector (two stats, no lock, no parse) for cross-process wake-ups."""
        try:
            st = os.stat(self.journal_path)
            journal: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except OSError:
            journal = None
        try:
            directory: int | None = os.stat(self.dir).st_mtime_ns
        except OSError:
            directory = None
        return (self.generation, journal, directory)

    # -- the critical section ---------------------------------------------------------------
    def run(self, fn: Callable[[Txn], R], exclusive: bool, clock: Callable[[], datetime]) -> Outcome[R]:
        """Lock, catch up, run *fn*, unlock. Raises ProjectNotFound, CorruptData, or OSError."""
        if not self.dir.is_dir():
            raise exceptions.ProjectNotFound(f"project {self.slug!r} not found", project=self.slug)
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(self.lock.hold(exclusive))
            except FileNotFoundError:
                # the directory went away between the check and the lock
                raise exceptions.ProjectNotFound(f"project {self.slug!r} not found", project=self.slug) from None
            state = self._refresh(exclusive)
            txn = Txn(self, state, clock(), exclusive)
            try:
                result = fn(txn)
            finally:
                if txn.committed:
                    self._after_commit(txn.committed)
            return Outcome(result, txn.committed)

    def _refresh(self, exclusive: bool) -> ProjectState:
        if self._fd_pid != os.getpid():
            self._fd = None  # the parent's descriptor: let it be, reload privately
            self._fd_pid = os.getpid()
            self.state = None
        generation = self._current_generation()
        try:
            if self.state is None or generation != self.generation:
                self._load(generation, exclusive)
            else:
                self._catch_up()
            if exclusive:
                self._cut_torn_tail()
        except BaseException:
            # Whatever was half-read is not trusted: the next operation reloads from the files.
            self.state = None
            raise
        assert self.state is not None
        return self.state

    def _current_generation(self) -> int:
        generations = [int(m.group(1)) for name in os.listdir(self.dir) if (m := _SNAPSHOT_RE.match(name))]
        if not generations:
            raise corrupt(self.dir, "no snapshot-*.jsonl in the project directory")
        return max(generations)

    # -- loading ----------------------------------------------------------------------------
    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.close(fd)

    def _load(self, generation: int, exclusive: bool) -> None:
        path = self.dir / snapshot_name(generation)
        reader = codec.SnapshotReader(generation)
        lineno = 0
        size = 0
        with open(path, "rb") as fh:
            for lineno, raw in enumerate(fh, start=1):
                size += len(raw)
                if not raw.endswith(b"\n"):
                    # Snapshots are written whole then renamed: a missing newline is damage.
                    raise corrupt(path, "truncated line (no newline at the end of the file)", lineno)
                try:
                    reader.feed(codec.parse_line(raw))
                except codec.Malformed as exc:
                    raise corrupt(path, str(exc), lineno) from None
        try:
            state = reader.finish()
        except codec.Malformed as exc:
            raise corrupt(path, str(exc), lineno + 1) from None
        self._close_fd()
        self.state = state
        self.generation = generation
        self.offset = 0
        self.lineno = 0
        self.snapshot_bytes = size
        self.replayed += 1
        self._catch_up()
        if exclusive:
            self._sync_missions()

    def _open_journal(self) -> int | None:
        if self._fd is None:
            try:
                self._fd = os.open(self.journal_path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
            except FileNotFoundError:
                return None
        return self._fd

    def _catch_up(self) -> int:
        """Apply every complete line appended since our offset; returns how many."""
        assert self.state is not None
        fd = self._open_journal()
        if fd is None:
            return 0
        applied = 0
        chunk = _READ_CHUNK
        while True:
            size = os.fstat(fd).st_size
            if size < self.offset:
                raise corrupt(
                    self.journal_path, f"the journal shrank below {self.offset} bytes already replayed", self.lineno
                )
            if size == self.offset:
                return applied
            want = min(size - self.offset, chunk)
            data = os.pread(fd, want, self.offset)
            end = data.rfind(b"\n")
            if end < 0:
                if want == size - self.offset:
                    return applied  # only a torn (or in-flight) tail left
                chunk *= 2  # one big line (a large batch): read further
                continue
            for raw in data[:end].split(b"\n"):
                lineno = self.lineno + 1
                try:
                    changes = codec.decode_changes(codec.parse_line(raw))
                except codec.Malformed as exc:
                    raise corrupt(self.journal_path, str(exc), lineno) from None
                self.state.apply(changes)
                self.lineno = lineno
                self.offset += len(raw) + 1
                applied += 1
                self.replayed += 1

    def _cut_torn_tail(self) -> None:
        """Under the exclusive lock no append is in flight: bytes after the last newline are torn."""
        fd = self._fd
        if fd is None:
            return
        size = os.fstat(fd).st_size
        if size <= self.offset:
            return
        tail = os.pread(fd, size - self.offset, self.offset)
        aside = self.dir / f"{journal_name(self.generation)}.torn-{self.offset}"
        # Keep the bytes (nothing is silently dropped), then cut them off before the next append.
        write_atomic(aside, tail)
        os.ftruncate(fd, self.offset)
        os.fsync(fd)
        logger.warning(
            "%s: cut %d bytes of a torn (unacknowledged) append at offset %d; saved to %s",
            self.journal_path,
            len(tail),
            self.offset,
            aside.name,
        )

    def _sync_missions(self) -> None:
        """mission.json files are derived: rewrite any that are missing or stale (after a crash)."""
        assert self.state is not None
        for mission in self.state.missions.values():
            path = _mission_path(self.dir, mission.id)
            try:
                current = path.read_bytes()
            except FileNotFoundError:
                current = b""
            if current != _mission_bytes(mission):
                _write_mission(self.dir, mission)

    # -- writing ----------------------------------------------------------------------------
    def append(self, changes: Changes) -> None:
        """Append one durable journal line (exclusive lock held, state caught up)."""
        line = codec.encode_changes(changes) + b"\n"
        fd = self._open_journal()
        if fd is None:
            fd = os.open(self.journal_path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._fd = fd
            fsync_dir(self.dir)
        try:
            append_durable(fd, line, undo_to=self.offset)
        except BaseException:
            self.state = None  # the file is cut back, but reload rather than trust the guess
            raise
        self.offset += len(line)
        self.lineno += 1

    def _after_commit(self, committed: list[Changes]) -> None:
        missions = {mid: m for c in committed for mid, m in c.missions.items()}
        for mission in missions.values():
            try:
                _write_mission(self.dir, mission)
            except OSError as exc:
                # Derived file: the journal already holds the change; the next full load rewrites it.
                logger.warning("could not write mission.json for %s/%s: %s", self.slug, mission.id, exc)
        if self.state is None:
            return  # a later append of the same operation failed; the next operation reloads
        if self.lineno >= self.policy.min_entries and self.offset >= self.policy.ratio * self.snapshot_bytes:
            if time.monotonic() < self._compact_not_before:
                return
            try:
                self.compact()
            except OSError as exc:
                # The operation is already durable in the journal; compaction can wait. Not on the
                # next write, though: a full disk would otherwise rewrite (and fail) a whole snapshot
                # per operation. Back off exponentially, up to five minutes.
                self._compact_failures += 1
                delay = min(_COMPACT_BACKOFF_MAX, _COMPACT_BACKOFF * 2 ** (self._compact_failures - 1))
                self._compact_not_before = time.monotonic() + delay
                logger.warning("compaction of project %s failed (next try in %.0fs): %s", self.slug, delay, exc)
            else:
                self._compact_failures = 0

    def compact(self) -> None:
        """Fold the journal into a new snapshot generation (exclusive lock held, state caught up)."""
        assert self.state is not None
        new = self.generation + 1
        # 1. the new (empty) journal exists before the snapshot that makes it current
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
        fd = os.open(self.dir / journal_name(new), flags, 0o600)
        try:
            # 2. the commit point: an atomic rename of the complete snapshot (+ directory fsync)
            size = write_atomic(self.dir / snapshot_name(new), codec.encode_snapshot(self.state, new))
        except BaseException:
            os.close(fd)
            raise
        self._close_fd()
        self._fd = fd
        self.generation = new
        self.offset = 0
        self.lineno = 0
        self.snapshot_bytes = size
        # 3. older generations are garbage now (oldest first, so a crash midway never leaves an
        #    older snapshot without the newer one)
        old = []
        for name in os.listdir(self.dir):
            m = _SNAPSHOT_RE.match(name) or _JOURNAL_RE.match(name)
            if m and int(m.group(1)) < new:
                old.append((int(m.group(1)), name))
            elif name.startswith(".snapshot-") and name.endswith(".tmp"):
                # a snapshot half-written by a killed compaction (only compaction writes these, and
                # we hold the exclusive lock, so none is in progress)
                old.append((-1, name))
        for _, name in sorted(old):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.dir / name)
        fsync_dir(self.dir)
        logger.info("project %s compacted into generation %d (%d bytes)", self.slug, new, size)

    def close(self) -> None:
        """Release descriptors."""
        self._close_fd()
        self.lock.close()
