"""The MCP tools: their names, arguments, profiles, and what each does through QueueService.

Both transports (``qs mcp`` over stdio, ``/mcp`` over streamable HTTP) serve exactly these tools;
they differ only in who the caller is (:class:`ToolContext.principal`). Every tool checks the
caller's role for the project the same way the REST routes do (``auth.Action``).

Results are slim JSON records; every list says plainly when it was cut (``"more": "N more; pass
cursor=…"``). Errors are raised as our own ``QueueServiceError`` and turned into MCP tool errors by
``mcp_server.server`` (code, message, details), so a refused holder sees ``lease_invalid`` and why.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from queue_service import coord, exceptions
from queue_service.auth import Action, Principal
from queue_service.models import MAX_KEY_LEN, Claim, Task
from queue_service.service import QueueService

__all__ = [
    "CORE_TOOLS",
    "PROFILES",
    "TOOLS",
    "ToolContext",
    "ToolSpec",
    "claim_best_ready",
    "input_schema",
    "run_tool",
    "tools_for",
]

Profile = Literal["core", "all", "readonly"]

#: tasks a list shows unless ``limit`` says otherwise, and the most it may ask for
_DEFAULT_LIMIT = 20
_MAX_LIMIT = 200
#: notes shown by coord_task_detail (the newest), and the JSON size a shown result is cut at
_NOTES_SHOWN = 20
_RESULT_CHARS = 4000
#: ready tasks looked at to order them (until the service's dispatch-order listing lands)


@dataclass(frozen=True)
class ToolContext:
    """Who calls, and what the tools work with."""

    service: QueueService
    principal: Principal
    #: the project of ``qs mcp PROJECT`` (tools then take ``project`` as optional)
    default_project: str | None
    #: lease of ``claim_next`` (``QUEUE_AGENT_LEASE_SECONDS``)
    agent_lease_seconds: float
    #: the agent id used when a call names none (unique per server process)
    default_agent: str


# -- arguments ----------------------------------------------------------------------------------
# One pydantic model per tool: it validates the call and is the source of the advertised schema.

_Project = Annotated[str | None, Field(max_length=63, description="project slug; default: the server's project")]
_Key = Annotated[str, Field(min_length=1, max_length=MAX_KEY_LEN, description="task key, e.g. WEB-12")]
_Token = Annotated[str, Field(min_length=1, max_length=512, description="lease token from claim_next")]
_Agent = Annotated[str | None, Field(max_length=200, description="your agent id; default: this session's")]
_Role = Annotated[str | None, Field(max_length=64, description="only tasks of this role")]
_Limit = Annotated[int, Field(ge=1, le=_MAX_LIMIT, description=f"max items (1-{_MAX_LIMIT})")]
_Cursor = Annotated[str | None, Field(max_length=20, description="from a previous 'more'")]


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    project: _Project = None


class _KeyArgs(_Args):
    key: _Key


class _LeaseArgs(_KeyArgs):
    token: _Token


class MissionStatusArgs(_Args):
    """coord_mission_status."""


class ListTasksArgs(_Args):
    """coord_list_tasks."""

    limit: _Limit = _DEFAULT_LIMIT
    cursor: _Cursor = None


class TaskDetailArgs(_KeyArgs):
    """coord_task_detail."""


class ClaimNextArgs(_Args):
    """claim_next."""

    agent: _Agent = None
    role: _Role = None


class HeartbeatArgs(_LeaseArgs):
    """heartbeat."""


class CompleteArgs(_LeaseArgs):
    """complete."""

    result: Annotated[Any, Field(description="any JSON: what you produced")] = None


class FailArgs(_LeaseArgs):
    """fail."""

    error: Annotated[str, Field(min_length=1, max_length=20_000, description="what went wrong")]
    retryable: Annotated[bool, Field(description="false: never retry")] = True


class ReleaseArgs(_LeaseArgs):
    """release."""


class AddNoteArgs(_KeyArgs):
    """add_note."""

    text: Annotated[str, Field(min_length=1, max_length=100_000)]
    token: Annotated[str | None, Field(max_length=512, description="your lease token (renews the lease)")] = None
    agent: _Agent = None


class CreateTaskArgs(_Args):
    """create_task."""

    title: Annotated[str, Field(min_length=1, max_length=500)]
    description: Annotated[str, Field(max_length=100_000)] = ""
    role: Annotated[str | None, Field(max_length=64)] = None
    priority: Annotated[str | None, Field(max_length=2, description="P0 (first) to P3")] = None
    depends_on: Annotated[list[str], Field(max_length=100, description="keys it waits for")] = []
    discovered_from: Annotated[str | None, Field(max_length=MAX_KEY_LEN, description="key you found it in")] = None
    token: Annotated[str | None, Field(max_length=512, description="your lease on discovered_from")] = None


class ReadyArgs(_Args):
    """ready."""

    role: _Role = None
    limit: _Limit = _DEFAULT_LIMIT
    cursor: _Cursor = None


# -- what the tools return ------------------------------------------------------------------------


def _slim(task: Task) -> dict[str, Any]:
    """A task as a list shows it: what an agent needs to pick one, nothing more."""
    out: dict[str, Any] = {
        "key": task.key,
        "title": task.title,
        "status": task.status.value,
        "priority": task.priority.value,
        "role": task.role,
    }
    if task.assignee:
        out["assignee"] = task.assignee
    if task.depends_on:
        out["depends_on"] = list(task.depends_on)
    return out


def _page(items: list[dict[str, Any]], total: int, offset: int, name: str) -> dict[str, Any]:
    """A list with explicit truncation: ``more`` says how many were left out and how to get them."""
    out: dict[str, Any] = {name: items, "total": total}
    rest = total - offset - len(items)
    if rest > 0:
        out["more"] = f"{rest} more; pass cursor={offset + len(items)}"
    return out


def _offset(cursor: str | None) -> int:
    if cursor is None:
        return 0
    if not cursor.isdigit():
        raise exceptions.ValidationError(
            f"cursor must be the number a 'more' line gave, got {cursor!r}", field="cursor"
        )
    return int(cursor)


def _cut_result(record: dict[str, Any]) -> dict[str, Any]:
    """Keep a big stored result out of the agent's context: show its start and say it was cut."""
    text = json.dumps(record.get("result"), ensure_ascii=False)
    if len(text) > _RESULT_CHARS:
        record["result"] = text[:_RESULT_CHARS]
        record["result_cut"] = f"{len(text) - _RESULT_CHARS} more characters of JSON not shown"
    return record


# -- the tools ------------------------------------------------------------------------------------


async def _project(ctx: ToolContext, args: _Args, action: Action) -> str:
    """The project a call is about (argument, else the server's, else the token's, else the only one),
    checked against the caller's role."""
    project = args.project or ctx.default_project or ctx.principal.project
    slug = await coord.resolve_project(ctx.service, ctx.principal, project)
    ctx.principal.check(action, slug)
    return slug


def _agent(ctx: ToolContext, agent: str | None) -> str:
    return agent or ctx.default_agent


async def claim_best_ready(ctx: ToolContext, project: str, agent: str, role: str | None) -> Claim | None:
    """Atomically claim the best ready task of *role* (the one dispatch order) with the agent lease."""
    roles = [role] if role else None
    return await ctx.service.claim_next(project, agent, roles, lease_seconds=ctx.agent_lease_seconds)


async def _ready_tasks(ctx: ToolContext, project: str, role: str | None, count: int) -> tuple[list[Task], int]:
    """The first *count* ready tasks of *role* in the one dispatch order, and how many are ready in all."""
    ready = await ctx.service.ready_tasks(project, [role] if role else None, limit=max(1, min(count, 1000)))
    return ready.tasks, ready.total


def _how_to_finish(project: str, key: str) -> str:
    return (
        f"When done: complete(project='{project}', key='{key}', token=<token>, result=...); "
        "can't: fail(..., error=...) or release(...); heartbeat/add_note with the token renew the lease."
    )


async def _coord_mission_status(ctx: ToolContext, args: MissionStatusArgs) -> dict[str, Any]:
    slug = await _project(ctx, args, Action.READ)
    status = await coord.mission_status(ctx.service, slug, None)
    active = status["active_tasks"]
    if len(active) > _DEFAULT_LIMIT:
        status["active_tasks"] = active[:_DEFAULT_LIMIT]
        status["active_more"] = f"{len(active) - _DEFAULT_LIMIT} more in progress; see coord_list_tasks"
    return status


async def _coord_list_tasks(ctx: ToolContext, args: ListTasksArgs) -> dict[str, Any]:
    slug = await _project(ctx, args, Action.READ)
    mission = await coord.resolve_mission(ctx.service, slug, None)
    tasks = await coord.mission_tasks(ctx.service, slug, mission.id)
    offset = _offset(args.cursor)
    shown = [_slim(t) for t in tasks[offset : offset + args.limit]]
    return {"project": slug, "mission": mission.id, **_page(shown, len(tasks), offset, "tasks")}


async def _coord_task_detail(ctx: ToolContext, args: TaskDetailArgs) -> dict[str, Any]:
    slug = await _project(ctx, args, Action.READ)
    detail = _cut_result(await coord.task_detail(ctx.service, slug, args.key))
    notes = detail["notes_log"]
    if len(notes) > _NOTES_SHOWN:
        detail["notes_log"] = notes[-_NOTES_SHOWN:]
        detail["notes_more"] = f"{len(notes) - _NOTES_SHOWN} earlier notes not shown"
    return detail


async def _claim_next(ctx: ToolContext, args: ClaimNextArgs) -> dict[str, Any]:
    slug = await _project(ctx, args, Action.WORK)
    claim = await claim_best_ready(ctx, slug, _agent(ctx, args.agent), args.role)
    if claim is None:
        who = f" for role {args.role!r}" if args.role else ""
        return {"task": None, "message": f"no task is ready{who} in {slug}; try again later or call ready"}
    task = claim.task
    record = _slim(task)
    record["description"] = task.description
    return {
        "task": record,
        "token": claim.lease.token,
        "lease_expires_at": claim.lease.expires_at.isoformat(),
        "lease_seconds": ctx.agent_lease_seconds,
        "next": _how_to_finish(slug, task.key),
    }


async def _heartbeat(ctx: ToolContext, args: HeartbeatArgs) -> dict[str, Any]:
    slug = await _project(ctx, args, Action.WORK)
    lease = await ctx.service.heartbeat(slug, args.key, args.token)
    return {"key": args.key, "lease_expires_at": lease.expires_at.isoformat()}


async def _complete(ctx: ToolContext, args: CompleteArgs) -> dict[str, Any]:
    slug = await _project(ctx, args, Action.WORK)
    task = await ctx.service.complete(slug, args.key, args.token, args.result)
    return _slim(task)


async def _fail(ctx: ToolContext, args: FailArgs) -> dict[str, Any]:
    slug = await _project(ctx, args, Action.WORK)
    task = await ctx.service.fail(slug, args.key, args.token, args.error, args.retryable)
    out = _slim(task)
    out["attempts"] = f"{task.attempts}/{task.max_attempts}"
    return out


async def _release(ctx: ToolContext, args: ReleaseArgs) -> dict[str, Any]:
    slug = await _project(ctx, args, Action.WORK)
    return _slim(await ctx.service.release(slug, args.key, args.token))


async def _add_note(ctx: ToolContext, args: AddNoteArgs) -> dict[str, Any]:
    slug = await _project(ctx, args, Action.WORK)
    note = await ctx.service.add_note(slug, args.key, _agent(ctx, args.agent), args.text, args.token)
    return {"key": note.task, "note_id": note.id, "at": note.created_at.isoformat()}


async def _may_create(ctx: ToolContext, slug: str, args: CreateTaskArgs) -> None:
    """Admins create tasks; an agent may too, for work it found while holding ``discovered_from``.

    The lease is proven by renewing it (any call carrying the token renews the lease).
    """
    if ctx.principal.allows(Action.ADMIN, slug):
        if args.discovered_from is not None:
            await ctx.service.get_task(slug, args.discovered_from)  # a typo names no task: refuse
        return
    ctx.principal.check(Action.WORK, slug)
    if args.discovered_from is None or args.token is None:
        raise exceptions.Forbidden(
            f"this {ctx.principal.role.value} token may create a task only with discovered_from=KEY and token=<your "
            "lease on KEY>",
            role=ctx.principal.role.value,
            action="admin",
            project=slug,
        )
    await ctx.service.heartbeat(slug, args.discovered_from, args.token)


async def _create_task(ctx: ToolContext, args: CreateTaskArgs) -> dict[str, Any]:
    slug = await _project(ctx, args, Action.WORK)
    await _may_create(ctx, slug, args)
    data: dict[str, Any] = {"title": args.title, "description": args.description, "depends_on": args.depends_on}
    if args.role is not None:
        data["role"] = args.role
    if args.priority is not None:
        data["priority"] = args.priority
    if args.discovered_from is not None:
        # an extra column: shown by the coord views, kept by TASKS.md sync and export/import
        data["extra"] = {"discovered_from": args.discovered_from}
    task = await ctx.service.create_task(slug, data)
    out = _slim(task)
    if args.discovered_from is not None:
        out["discovered_from"] = args.discovered_from
    return out


async def _ready(ctx: ToolContext, args: ReadyArgs) -> dict[str, Any]:
    slug = await _project(ctx, args, Action.READ)
    offset = _offset(args.cursor)
    tasks, total = await _ready_tasks(ctx, slug, args.role, offset + args.limit)
    return {"project": slug, **_page([_slim(t) for t in tasks[offset:]], total, offset, "tasks")}


# -- the registry ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolSpec:
    """One tool: its description, argument model, and body."""

    name: str
    description: str
    args: type[_Args]
    run: Callable[[ToolContext, Any], Awaitable[dict[str, Any]]]
    read_only: bool = False


_SPECS = (
    ToolSpec(
        "claim_next",
        "Claim the best ready task atomically. Returns the task, its lease token and lease end; keep the token.",
        ClaimNextArgs,
        _claim_next,
    ),
    ToolSpec("heartbeat", "Renew your lease on a task you hold.", HeartbeatArgs, _heartbeat),
    ToolSpec("complete", "Finish a task you hold, with its result.", CompleteArgs, _complete),
    ToolSpec("fail", "Report that a task you hold failed; it is retried unless retryable=false.", FailArgs, _fail),
    ToolSpec("release", "Give a task you hold back to the queue, unfinished.", ReleaseArgs, _release),
    ToolSpec("add_note", "Add a note to a task; with your token it also renews your lease.", AddNoteArgs, _add_note),
    ToolSpec(
        "create_task",
        "Create a task. Found it while working on KEY? Pass discovered_from=KEY and your token for KEY.",
        CreateTaskArgs,
        _create_task,
    ),
    ToolSpec("ready", "Ready tasks, best first (the order claim_next takes them).", ReadyArgs, _ready, read_only=True),
    ToolSpec(
        "coord_mission_status",
        "Mission progress: counts per status, milestones, active and next tasks.",
        MissionStatusArgs,
        _coord_mission_status,
        read_only=True,
    ),
    ToolSpec(
        "coord_list_tasks",
        "The mission's tasks in TASKS.md order (slim records).",
        ListTasksArgs,
        _coord_list_tasks,
        read_only=True,
    ),
    ToolSpec(
        "coord_task_detail",
        "One task in full: details, notes, blockers, what it unblocks, result.",
        TaskDetailArgs,
        _coord_task_detail,
        read_only=True,
    ),
)

TOOLS: dict[str, ToolSpec] = {spec.name: spec for spec in _SPECS}

#: the work loop: what an agent needs to claim, report and finish tasks
CORE_TOOLS = (
    "claim_next",
    "heartbeat",
    "complete",
    "fail",
    "release",
    "add_note",
    "create_task",
    "ready",
    "coord_task_detail",
)

PROFILES: dict[Profile, tuple[str, ...]] = {
    "core": CORE_TOOLS,
    "all": tuple(TOOLS),
    "readonly": tuple(spec.name for spec in _SPECS if spec.read_only),
}


def tools_for(profile: Profile) -> list[ToolSpec]:
    """The tools a profile serves (``QUEUE_MCP_TOOLS``), in a stable order."""
    names = set(PROFILES[profile])
    return [spec for spec in _SPECS if spec.name in names]


def _compact(node: Any) -> Any:
    """A JSON schema without what costs an agent context and tells it nothing: titles, and the
    ``anyOf [X, null]`` spelling of optional arguments (optional = not in ``required``)."""
    if isinstance(node, list):
        return [_compact(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {
        # under "properties" the keys are argument names (``title`` is one), not schema keywords
        k: {name: _compact(sub) for name, sub in v.items()} if k == "properties" else _compact(v)
        for k, v in node.items()
        if k != "title"
    }
    options = out.get("anyOf")
    if isinstance(options, list) and len(options) == 2 and {"type": "null"} in options:
        (kept,) = [o for o in options if o != {"type": "null"}]
        del out["anyOf"]
        out = {**kept, **out}
    if out.get("default") is None and "default" in out:
        del out["default"]
    return out


def input_schema(spec: ToolSpec) -> dict[str, Any]:
    """The tool's input JSON schema, compact (the ``tools/list`` payload is budgeted)."""
    schema = _compact(spec.args.model_json_schema())
    schema.pop("description", None)  # the argument model's docstring, not for the agent
    schema["additionalProperties"] = False
    return dict(schema)


def _validation_error(exc: pydantic.ValidationError, tool: str) -> exceptions.ValidationError:
    problems = [
        {"field": ".".join(str(p) for p in err["loc"]) or "arguments", "message": err["msg"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]
    first = problems[0]
    return exceptions.ValidationError(f"{tool}: {first['field']}: {first['message']}", problems=problems[:20])


async def run_tool(ctx: ToolContext, name: str, arguments: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate *arguments* and run tool *name*.

    Raises:
        QueueServiceError: an unknown tool or bad arguments (``validation_error``), a refused caller
            (``forbidden``), or whatever the operation itself refuses (``lease_invalid``…).
    """
    spec = TOOLS.get(name)
    if spec is None:
        raise exceptions.ValidationError(f"unknown tool {name!r}", tool=name)
    try:
        args = spec.args.model_validate(dict(arguments or {}))
    except pydantic.ValidationError as exc:
        raise _validation_error(exc, name) from None
    return await spec.run(ctx, args)
