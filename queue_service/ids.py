"""Identifiers both the service and its clients mint (kept free of server imports for the client)."""

from __future__ import annotations

import os
import socket
import uuid

__all__ = ["new_agent_id"]


def new_agent_id(name: str | None = None) -> str:
    """An agent id unique per process start: ``[name@]host:pid:nonce``.

    A restarted agent gets a new id, so it can never inherit (or be mistaken for) a dead
    predecessor's claims.
    """
    base = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    return f"{name}@{base}" if name else base
