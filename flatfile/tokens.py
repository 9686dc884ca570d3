"""API tokens in ``<data>/tokens.json`` (hashes only), shared by every project.

Tokens are added rarely (by an admin), so the whole file is rewritten atomically under
``<data>/tokens.lock``; readers cache the parsed file and re-read it only when its stat changes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pydantic

from flatfile.atomic import ensure_dir, write_atomic
from flatfile.errors import corrupt
from flatfile.locks import FileLock
from queue_service import exceptions
from queue_service.models import ApiToken, utcnow

__all__ = ["TOKENS_FORMAT", "TokenFile"]

TOKENS_FORMAT = "queue-service-flatfile-tokens"


class TokenFile:
    """The token records. Blocking: call from a worker thread."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "tokens.json"
        self.lock = FileLock(data_dir / "tokens.lock")
        self._data_dir = data_dir
        self._cache: tuple[tuple[int, int, int] | None, list[ApiToken]] | None = None

    def _signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _read(self) -> list[ApiToken]:
        sig = self._signature()
        if self._cache is not None and self._cache[0] == sig:
            return self._cache[1]
        tokens: list[ApiToken] = []
        if sig is not None:
            raw = self.path.read_bytes()
            try:
                doc: Any = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                line = exc.lineno if isinstance(exc, json.JSONDecodeError) else None
                raise corrupt(self.path, f"not valid JSON ({exc})", line) from None
            valid = isinstance(doc, dict) and doc.get("format") == TOKENS_FORMAT and isinstance(doc.get("tokens"), list)
            if not valid:
                raise corrupt(self.path, f"expected {{'format': {TOKENS_FORMAT!r}, 'tokens': [...]}}")
            for i, item in enumerate(doc["tokens"]):
                try:
                    tokens.append(ApiToken.model_validate(item))
                except pydantic.ValidationError as exc:
                    raise corrupt(self.path, f"token #{i}: {exc.errors(include_url=False)[0]['msg']}") from None
        self._cache = (sig, tokens)
        return tokens

    def add(self, token: ApiToken) -> None:
        """Store a token. Raises AlreadyExists for a duplicate id."""
        ensure_dir(self._data_dir)
        with self.lock.hold(exclusive=True):
            tokens = self._read()
            if any(t.id == token.id for t in tokens):
                raise exceptions.AlreadyExists(f"token {token.id!r} already exists")
            doc = {"format": TOKENS_FORMAT, "tokens": [t.model_dump(mode="json") for t in [*tokens, token]]}
            write_atomic(self.path, json.dumps(doc, indent=2).encode() + b"\n")
            self._cache = None

    def find(self, token_hash: str) -> ApiToken | None:
        """The token with this hash, or None."""
        return next((t for t in self._read() if t.token_hash == token_hash), None)

    def count(self) -> int:
        """How many token records exist (revoked ones included)."""
        return len(self._read())

    def all(self) -> list[ApiToken]:
        """Every token record, oldest first."""
        return sorted(self._read(), key=lambda t: (t.created_at, t.id))

    def _write(self, tokens: list[ApiToken]) -> None:
        doc = {"format": TOKENS_FORMAT, "tokens": [t.model_dump(mode="json") for t in tokens]}
        write_atomic(self.path, json.dumps(doc, indent=2).encode() + b"\n")
        self._cache = None

    def revoke(self, token_id: str) -> ApiToken:
        """Mark a token revoked (idempotent). Raises NotFound for an unknown id."""
        ensure_dir(self._data_dir)
        with self.lock.hold(exclusive=True):
            tokens = self._read()
            found = next((t for t in tokens if t.id == token_id), None)
            if found is None:
                raise exceptions.NotFound(f"no token with id {token_id!r}", token=token_id)
            if found.revoked_at is not None:
                return found
            revoked = found.model_copy(update={"revoked_at": utcnow()})
            self._write([revoked if t.id == token_id else t for t in tokens])
            return revoked

    def purge(self) -> int:
        """Delete every token record; returns how many there were."""
        ensure_dir(self._data_dir)
        with self.lock.hold(exclusive=True):
            count = len(self._read())
            self._write([])
            return count

    def close(self) -> None:
        """Release the lock descriptor."""
        self.lock.close()
