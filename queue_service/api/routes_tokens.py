"""API tokens a service-wide admin can see and revoke (``GET /v1/tokens``, ``DELETE /v1/tokens/{id}``).

Tokens are created by the operator (``qs token create``), never over HTTP: whoever can reach the API
must already hold one. A revoked token's record stays, so auth stays on; only ``qs token purge``
(storage access, not HTTP) deletes the records and turns auth off.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict

from queue_service.api.deps import PrincipalDep, StateDep, StrictJSONRoute
from queue_service.api.schemas import ErrorBody
from queue_service.auth import Action
from queue_service.models import ApiToken, TokenRole

__all__ = ["TokenInfo", "TokenList", "router"]

router = APIRouter(
    prefix="/v1/tokens",
    tags=["tokens"],
    responses={code: {"model": ErrorBody} for code in (401, 403, 404)},
    route_class=StrictJSONRoute,
)

TokenId = Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="token id (not the secret)")]


class TokenInfo(BaseModel):
    """A token record without its hash."""

    model_config = ConfigDict(frozen=True)

    id: str
    project: str | None
    role: TokenRole
    name: str | None
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, token: ApiToken) -> TokenInfo:
        return cls(**token.model_dump(exclude={"token_hash"}))


class TokenList(BaseModel):
    model_config = ConfigDict(frozen=True)

    items: tuple[TokenInfo, ...]


@router.get("", response_model=TokenList)
async def list_tokens(state: StateDep, principal: PrincipalDep) -> TokenList:
    """Every token record, revoked ones included (needs a global admin token)."""
    principal.check(Action.ADMIN, None)
    return TokenList(items=tuple(TokenInfo.of(t) for t in await state.backend.records.list_api_tokens()))


@router.delete("/{token_id}", response_model=TokenInfo)
async def revoke_token(token_id: TokenId, state: StateDep, principal: PrincipalDep) -> TokenInfo:
    """Revoke a token: refused at once here, on every other replica within 30 s (their cache).

    Idempotent. The record stays (auth stays on); ``qs token purge`` deletes every record.
    """
    principal.check(Action.ADMIN, None)
    record = await state.backend.records.revoke_api_token(token_id)
    state.authenticator.reset()  # this replica: at once
    return TokenInfo.of(record)
