"""Claims (long-poll) and the lease-holder operations: heartbeat, complete, fail, release."""

from __future__ import annotations

import contextlib
import time
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from queue_service import exceptions
from queue_service.api import limits
from queue_service.api.deps import KeyPath, ProjectPath, ReadDep, ServiceDep, StateDep, StrictJSONRoute, WorkDep
from queue_service.api.schemas import (
    ClaimBatch,
    ClaimRequest,
    CompleteRequest,
    ErrorBody,
    FailRequest,
    HeartbeatRequest,
    ReleaseRequest,
)
from queue_service.models import Claim, Lease, ReadyList, Task

__all__ = ["router"]

_ERRORS: dict[int | str, dict[str, object]] = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 422)}

router = APIRouter(prefix="/v1/projects/{project}", tags=["dispatch"], responses=_ERRORS, route_class=StrictJSONRoute)


@router.post(
    "/claims",
    response_model=Claim | ClaimBatch,
    responses={204: {"description": "nothing became ready within wait_seconds (without limit)"}},
)
async def claim(
    project: ProjectPath, body: ClaimRequest, request: Request, state: StateDep, _: WorkDep
) -> Claim | ClaimBatch | Response:
    """Claim the highest-priority ready task of the given roles, waiting up to ``wait_seconds``.

    Answers 200 with the task and its lease (keep the ``token``), or 204 when nothing was ready.
    With ``limit``: claims up to that many tasks in one go and answers 200 with ``{"claims": [...]}``
    (best first, each with its own token; an empty list when nothing was ready).
    """
    if body.limit is not None:
        return await _claim_many(project, body, body.limit, request, state)
    started = time.perf_counter()
    result = await state.service.claim(
        project,
        body.agent,
        body.roles,
        wait=body.wait_seconds,
        lease_seconds=body.lease_seconds,
        lease_profile=body.lease_profile,
    )
    outcome = "claimed" if result else "empty"
    state.metrics.claim_latency.labels(project, outcome).observe(time.perf_counter() - started)
    if result is None:
        state.metrics.empty_claims.labels(project).inc()
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    if body.wait_seconds > 0 and await request.is_disconnected():
        # the long-poll caller is gone and will never see the token: hand the task straight back
        with contextlib.suppress(exceptions.QueueServiceError):
            await state.service.release(project, result.task.key, result.lease.token)
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    state.metrics.claims.labels(project).inc()
    return result


async def _claim_many(project: str, body: ClaimRequest, limit: int, request: Request, state: StateDep) -> ClaimBatch:
    started = time.perf_counter()
    lease = state.service.agent_lease(body.lease_seconds) if body.lease_profile == "agent" else body.lease_seconds
    claims = await state.service.claim_many(
        project, body.agent, body.roles, limit=limit, wait=body.wait_seconds, lease_seconds=lease
    )
    state.metrics.claim_latency.labels(project, "claimed" if claims else "empty").observe(time.perf_counter() - started)
    if not claims:
        state.metrics.empty_claims.labels(project).inc()
        return ClaimBatch(claims=[])
    if body.wait_seconds > 0 and await request.is_disconnected():
        # the long-poll caller is gone and will never see the tokens: hand the tasks straight back
        for c in claims:
            with contextlib.suppress(exceptions.QueueServiceError):
                await state.service.release(project, c.task.key, c.lease.token)
        return ClaimBatch(claims=[])
    state.metrics.claims.labels(project).inc(len(claims))
    return ClaimBatch(claims=claims)


@router.get("/ready", response_model=ReadyList)
async def ready(
    project: ProjectPath,
    service: ServiceDep,
    _: ReadDep,
    role: Annotated[list[str] | None, Query(max_length=100, description="roles; repeat or comma-separate")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> ReadyList:
    """Ready tasks in the one dispatch order (priority, then how many not-done tasks each unblocks,
    then age): the first ``limit`` and the ``total``. ``limit=1`` is "what should I do next"."""
    roles = [r.strip() for value in role or [] for r in value.split(",") if r.strip()]
    return await service.ready_tasks(project, roles or None, limit)


@router.post("/tasks/{key}/heartbeat", response_model=Lease)
async def heartbeat(
    project: ProjectPath, key: KeyPath, body: HeartbeatRequest, service: ServiceDep, _: WorkDep
) -> Lease:
    """Extend the lease; 409 ``lease_invalid`` if the token is wrong or the lease was lost."""
    return await service.heartbeat(project, key, body.token, body.lease_seconds)


@router.post("/tasks/{key}/complete", response_model=Task)
async def complete(project: ProjectPath, key: KeyPath, body: CompleteRequest, state: StateDep, _: WorkDep) -> Task:
    """Finish the task with a result; dependents whose deps are all done become ready."""
    limits.check_result(body.result, state.settings)
    task = await state.service.complete(project, key, body.token, body.result)
    state.metrics.completions.labels(project).inc()
    return task


@router.post("/tasks/{key}/fail", response_model=Task)
async def fail(project: ProjectPath, key: KeyPath, body: FailRequest, state: StateDep, _: WorkDep) -> Task:
    """Report a failed attempt: retried with backoff if retryable and attempts remain, else dead-lettered."""
    task = await state.service.fail(project, key, body.token, body.error, body.retryable)
    state.metrics.failures.labels(project, str(body.retryable).lower()).inc()
    return task


@router.post("/tasks/{key}/release", response_model=Task)
async def release(project: ProjectPath, key: KeyPath, body: ReleaseRequest, state: StateDep, _: WorkDep) -> Task:
    """Give the task back at once, without counting an attempt."""
    task = await state.service.release(project, key, body.token)
    state.metrics.releases.labels(project).inc()
    return task
