"""Where project workspaces may live: under the operator's root, never where an API caller points.

The operator picks one root, ``QUEUE_WORKSPACE``. Through the API a workspace is named *relative* to
it (or left out: ``<root>/<slug>``), and it is stored as the absolute path under the root. The rules
(issue 9, ``docs/plans/security.md`` "Files and workspaces"):

* no absolute path, no ``~`` (nothing is ever home-expanded), no ``.``/``..``/empty segment, no
  segment over 255 bytes or with control characters, nothing resolving (after symlinks) outside the root;
* two projects' workspaces never overlap (equal, or one inside the other);
* no workspace inside the data directory (the flatfile journal), and no synced file resolving into it;
* with ``QUEUE_WORKSPACE`` unset, the API cannot set a workspace at all (422).

:class:`WorkspacePolicy` carries the root, the data directory and whether the caller is the machine's
*operator*: the CLI opening the backend directly (no server) is the user on their own machine, so
with no root it may name any directory by path; with a root it follows the same rules as the API.

The same rules are checked again on *stored* projects before anything is synced
(:func:`locate_workspace`, :func:`locate_tasks_file`): a project stored before these rules existed,
or written by an import, gets its sync disabled with the reason instead of being used.
Symlinks below the root are refused by the file layer itself (``workspace_sync.safe_files`` opens
every directory from the root down with ``O_NOFOLLOW``), so a link planted after these checks
still cannot lead a write out of the root.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from queue_service import exceptions
from queue_service.models import DEFAULT_MISSION, Mission, Project, tasks_file_problem

if TYPE_CHECKING:
    from queue_service.settings import Settings

__all__ = ["COORD_TASKS_FILE", "Confined", "WorkspacePolicy", "locate_tasks_file", "locate_workspace", "tasks_file_of"]

#: longest file name the kernel accepts (a longer segment raises ENAMETOOLONG)
SEGMENT_MAX_BYTES = 255
#: deepest workspace below the root
MAX_DEPTH = 16
#: name of the TASKS.md of a project's default mission
DEFAULT_TASKS_FILE = "TASKS.md"
#: where coord keeps TASKS.md (issue 18; see workspace_sync.layout for how the default mission finds it)
COORD_TASKS_FILE = "docs/TASKS.md"


@dataclasses.dataclass(frozen=True)
class Confined:
    """A path as a trusted directory plus the segments below it that are walked without following links.

    Attributes:
        base: the operator's directory (``QUEUE_WORKSPACE``, or the workspace itself in operator mode);
            opened as given.
        parts: the segments from *base* to the target; every one is opened with ``O_NOFOLLOW``.
    """

    base: Path
    parts: tuple[str, ...]

    @classmethod
    def of(cls, path: Path) -> Confined:
        """*path* with its parent trusted (only the last segment is checked)."""
        path = Path(os.path.normpath(path.absolute()))
        return cls(path.parent, (path.name,))

    @property
    def path(self) -> Path:
        """The absolute path (also the key of a file's stored sync state)."""
        return self.base.joinpath(*self.parts)

    def child(self, relative: str) -> Confined:
        """This directory's *relative* (``a/b.md``) as a confined path."""
        return Confined(self.base, (*self.parts, *relative.split("/")))


def _segment_problem(segment: str, value: str) -> str | None:
    if segment in ("", ".", ".."):
        shown = "empty" if not segment else repr(segment)
        return f"workspace {value!r}: {shown} segments are refused"
    if len(segment.encode("utf-8", "surrogateescape")) > SEGMENT_MAX_BYTES:
        return f"workspace {value!r}: a segment is longer than {SEGMENT_MAX_BYTES} bytes"
    if any(ord(c) < 32 or ord(c) == 127 for c in segment):
        return f"workspace {value!r}: control characters are refused"
    return None


def _segments_problem(segments: Iterable[str], value: str) -> str | None:
    for segment in segments:
        problem = _segment_problem(segment, value)
        if problem:
            return problem
    return None


def _inside(path: Path, directory: Path) -> bool:
    """*path* is *directory* or below it (both absolute and normalised)."""
    return path == directory or directory in path.parents


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


@dataclasses.dataclass(frozen=True)
class WorkspacePolicy:
    """The workspace rules of one service instance (see the module docstring).

    Attributes:
        root: ``QUEUE_WORKSPACE`` (absolute), or None when the operator set none.
        data_dir: the flatfile data directory (absolute), when the backend has one.
        operator: the caller is the machine's user (CLI direct mode), not an API client.
    """

    root: Path | None = None
    data_dir: Path | None = None
    operator: bool = False

    def __post_init__(self) -> None:
        # the operator's own paths: made absolute once, so stored workspaces compare as strings
        for name in ("root", "data_dir"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(os.path.normpath(Path(value).expanduser().absolute())))

    @classmethod
    def from_settings(cls, settings: Settings, *, operator: bool) -> WorkspacePolicy:
        """The policy ``settings`` configure (``QUEUE_WORKSPACE``, the flatfile data directory)."""
        url = settings.resolved_backend_url()
        data_dir = Path(url.removeprefix("file://")) if url.startswith("file://") else None
        return cls(root=settings.workspace, data_dir=data_dir, operator=operator)

    # -- a caller names a workspace -------------------------------------------------------------
    def default_for(self, slug: str) -> str | None:
        """The workspace a new project gets when none is named: ``<root>/<slug>`` (None without a root)."""
        return None if self.root is None else str(self.root / slug)

    def place(self, value: str) -> str:
        """Check a workspace a caller named and return the absolute path to store.

        Raises:
            ValidationError: the value breaks a rule; the message names it.
        """
        if value.startswith("~"):
            return self._refuse(
                f"workspace {value!r}: '~' is never expanded; name a directory relative to QUEUE_WORKSPACE"
            )
        if self.root is None:
            if not self.operator:
                return self._refuse(
                    "QUEUE_WORKSPACE is not set on this server, so no workspace can be set through the API; "
                    "the operator sets QUEUE_WORKSPACE and projects then get <QUEUE_WORKSPACE>/<slug>"
                )
            # operator mode, no root: the user names a directory on their own machine
            path = Path(os.path.normpath(Path(value).absolute()))
            problem = _segments_problem(path.parts[1:], value)
            if problem:
                return self._refuse(problem)
            self._check_data_dir(path, value)
            return str(path)
        if value.startswith("/"):
            return self._refuse(
                f"workspace {value!r}: absolute paths are refused; name a directory relative to QUEUE_WORKSPACE"
            )
        segments = value.removesuffix("/").split("/")
        problem = _segments_problem(segments, value)
        if problem:
            return self._refuse(problem)
        if len(segments) > MAX_DEPTH:
            return self._refuse(f"workspace {value!r}: at most {MAX_DEPTH} segments below QUEUE_WORKSPACE")
        path = self.root.joinpath(*segments)
        if not _inside(_real(path), _real(self.root)):
            return self._refuse(f"workspace {value!r} resolves outside QUEUE_WORKSPACE (through a symlink)")
        self._check_data_dir(path, value)
        return str(path)

    def check_overlap(self, workspace: str, slug: str, projects: Iterable[Project]) -> None:
        """Refuse *workspace* for project *slug* when it overlaps another project's workspace.

        Raises:
            ValidationError: it is another project's workspace, inside one, or contains one.
        """
        other = _overlapping(Path(workspace), slug, projects)
        if other is not None:
            raise exceptions.ValidationError(
                f"workspace {workspace} overlaps the workspace of project {other.slug} ({other.workspace}); "
                "two projects' workspaces may not overlap",
                field="workspace",
            )

    def _check_data_dir(self, path: Path, value: str) -> None:
        if self.data_dir is not None and _inside(_real(path), _real(self.data_dir)):
            self._refuse(f"workspace {value!r} is inside the data directory; a workspace may not be")

    @staticmethod
    def _refuse(message: str) -> str:
        raise exceptions.ValidationError(message, field="workspace")


def _overlapping(path: Path, slug: str, projects: Iterable[Project]) -> Project | None:
    real = _real(path)
    for project in projects:
        if project.slug == slug or not project.workspace:
            continue
        other = Path(os.path.normpath(project.workspace))
        other_real = _real(other)
        for a, b in ((path, other), (real, other_real)):
            if _inside(a, b) or _inside(b, a):
                return project
    return None


def locate_workspace(policy: WorkspacePolicy, project: Project, projects: Iterable[Project]) -> Confined | str:
    """Where a *stored* project's workspace may be synced, or why it may not (its sync is then disabled).

    Args:
        policy: the service's rules.
        project: the project (with a workspace).
        projects: every project (for the overlap rule).
    """
    value = project.workspace or ""
    if policy.root is None and not policy.operator:
        return "QUEUE_WORKSPACE is not set: the server syncs no workspace (set it and keep workspaces inside it)"
    if not value.startswith("/"):
        return f"workspace {value!r} is not an absolute path; set it again (relative to QUEUE_WORKSPACE)"
    path = Path(os.path.normpath(value))
    parts: tuple[str, ...]
    if policy.root is None:
        base, parts = path, ()
        problem = _segments_problem(path.parts[1:], value)
    else:
        if path == policy.root or not _inside(path, policy.root):
            return f"workspace {value} is outside QUEUE_WORKSPACE ({policy.root}); sync disabled"
        base, parts = policy.root, path.relative_to(policy.root).parts
        problem = _segments_problem(parts, value)
    if problem:
        return problem + "; sync disabled"
    try:
        real = _real(path)
        if policy.root is not None and not _inside(real, _real(policy.root)):
            return f"workspace {value} resolves outside QUEUE_WORKSPACE (through a symlink); sync disabled"
        if policy.data_dir is not None and _inside(real, _real(policy.data_dir)):
            return f"workspace {value} is inside the data directory; sync disabled"
    except OSError as exc:
        return f"workspace {value} cannot be resolved ({exc.strerror or exc}); sync disabled"
    other = _overlapping(path, project.slug, projects)
    if other is not None:
        return f"workspace {value} overlaps the workspace of project {other.slug}; sync disabled for both"
    return Confined(base, tuple(parts))


def tasks_file_of(mission: Mission) -> str:
    """The stored relative TASKS.md of *mission*: the default mission's is ``TASKS.md`` unless it was pinned
    to another file (``docs/TASKS.md`` by coord-layout discovery, issue 18)."""
    if mission.id == DEFAULT_MISSION and not mission.tasks_file:
        return DEFAULT_TASKS_FILE
    return mission.tasks_file


def locate_tasks_file(
    policy: WorkspacePolicy, workspace: Confined, mission: Mission, relative: str | None = None
) -> Confined | str:
    """Where a *stored* mission's TASKS.md is, below its located workspace, or why it may not be synced.

    *relative* overrides the mission's stored file (the discovered one, ``workspace_sync.layout``).
    """
    relative = relative or tasks_file_of(mission)
    problem = tasks_file_problem(relative)
    if problem:
        return problem + "; sync disabled"
    target = workspace.child(relative)
    if policy.data_dir is not None:
        try:
            # below the base nothing is a symlink (the file layer refuses them), so this is where it lands
            landing = _real(target.base).joinpath(*target.parts)
            if _inside(landing, _real(policy.data_dir)):
                return f"tasks_file {relative!r} resolves into the data directory; sync disabled"
        except OSError as exc:
            return f"tasks_file {relative!r} cannot be resolved ({exc.strerror or exc}); sync disabled"
    return target
