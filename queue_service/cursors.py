"""The opaque page cursor of ``list_tasks`` ("after this seq"), the same on every backend."""

from __future__ import annotations

import base64

from queue_service import exceptions

__all__ = ["decode_cursor", "encode_cursor"]


def encode_cursor(seq: int) -> str:
    """Opaque cursor for "after this seq"."""
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int:
    """The seq a cursor points after (0 for None). Raises ValidationError for a malformed cursor."""
    if not cursor:
        return 0
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        tag, _, num = raw.partition(":")
        # seq is a Postgres BIGINT: a longer number is malformed, not a driver error
        if tag != "seq" or not num.isascii() or not num.isdigit() or len(num) > 19:
            raise ValueError(raw)
        value = int(num)
        if value >= 2**63:
            raise ValueError(raw)
        return value
    except (ValueError, UnicodeDecodeError):
        raise exceptions.ValidationError(f"malformed cursor {cursor!r}", cursor=cursor) from None
