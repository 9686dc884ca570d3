"""Bearer-token authentication for the API, with small caches so auth costs no storage round trip
on most requests.

* Whether auth is on (any token record stored, revoked ones included) is re-read at most every
  ``recheck_seconds`` while it is off, and every ``cache_seconds`` while it is on: only
  ``qs token purge`` deletes the records, and every replica notices within ``cache_seconds``.
* A verified token is remembered for ``cache_seconds`` (30 s), so a revocation (``qs token revoke``,
  ``DELETE /v1/tokens/{id}``) takes effect on every replica within that time.
  :meth:`Authenticator.still_valid` answers the same question for a session made with a token (UI).
"""

from __future__ import annotations

import time

from queue_service import exceptions
from queue_service.auth import Principal, hash_token
from queue_service.backend import RecordStore

__all__ = ["Authenticator"]

_MAX_TOKEN_LEN = 512


class Authenticator:
    """Turns an ``Authorization: Bearer`` credential into a :class:`Principal`."""

    def __init__(
        self,
        records: RecordStore,
        *,
        recheck_seconds: float = 1.0,
        cache_seconds: float = 30.0,
        cache_size: int = 1024,
        require_tokens: bool = False,
    ) -> None:
        self._records = records
        #: bound where other machines reach it: with every token purged, refuse everyone instead of
        #: running open (the start-up check alone would only catch this at the next restart)
        self._require_tokens = require_tokens
        self._recheck = recheck_seconds
        self._ttl = cache_seconds
        self._cache_size = cache_size
        self._enabled = False
        self._checked_at = float("-inf")
        self._cache: dict[str, tuple[float, Principal]] = {}
        self._valid_ids: dict[str, tuple[float, bool]] = {}

    def reset(self) -> None:
        """Forget what is cached (tests, or after creating the first token in-process)."""
        self._enabled = False
        self._checked_at = float("-inf")
        self._cache.clear()
        self._valid_ids.clear()

    async def enabled(self) -> bool:
        """True when at least one token is stored."""
        now = time.monotonic()
        if now - self._checked_at >= (self._ttl if self._enabled else self._recheck):
            # claim the re-check before awaiting: requests arriving meanwhile use the cached answer
            # instead of each running their own count
            self._checked_at = now
            try:
                self._enabled = await self._records.count_api_tokens() > 0
            except BaseException:
                self._checked_at = float("-inf")
                raise
        return self._enabled

    async def authenticate(self, credential: str | None) -> Principal:
        """The caller for *credential* (the bearer token, or None if absent).

        Raises:
            AuthError: auth is on and the token is missing or unknown.
        """
        if not await self.enabled():
            if self._require_tokens:
                raise exceptions.AuthError(
                    "this service is reachable from other machines and has no API token: "
                    "an operator must create one (qs token create --role admin --all-projects)"
                )
            return Principal.open()
        if not credential:
            raise exceptions.AuthError("this service requires a bearer token: send 'Authorization: Bearer qs_…'")
        if len(credential) > _MAX_TOKEN_LEN:
            raise exceptions.AuthError("invalid bearer token")
        digest = hash_token(credential)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        record = await self._records.find_api_token(digest)
        if record is None:
            raise exceptions.AuthError("invalid bearer token")
        if record.revoked_at is not None:
            raise exceptions.AuthError(f"token {record.id} was revoked")
        principal = Principal.from_token(record)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[digest] = (now, principal)
        return principal

    async def still_valid(self, token_id: str) -> bool:
        """True if the token with this id exists and is not revoked (cached ``cache_seconds``).

        For sessions made with a token (the UI's cookie session): check this on every request, and
        the session ends within ``cache_seconds`` of ``qs token revoke``.
        """
        now = time.monotonic()
        hit = self._valid_ids.get(token_id)
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        tokens = await self._records.list_api_tokens()
        valid = any(t.id == token_id and t.revoked_at is None for t in tokens)
        if len(self._valid_ids) >= self._cache_size:
            self._valid_ids.clear()
        self._valid_ids[token_id] = (now, valid)
        return valid
