"""What the runner hands a child and writes about it: the child's environment (the service's
private ``QUEUE_*``/``MOSAIC_*`` variables removed) and log lines with control characters escaped,
so a task title cannot forge a line (issue 9)."""

from __future__ import annotations

import logging
import os
import unicodedata
from collections.abc import Sequence

__all__ = ["child_environment", "escape_control"]

# the runner's logger: one name for every part of ``qs run`` (cli/run.py configures it)
logger = logging.getLogger("queue_service.runner")

#: characters escaped in log lines: controls (newline, ESC…), format characters (bidi overrides),
#: line and paragraph separators
_UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def escape_control(text: str) -> str:
    """*text* with every control/format/separator character written as ``\\xNN``/``\\uNNNN``."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if unicodedata.category(ch) in _UNPRINTABLE_CATEGORIES:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


class _EscapeControlCharacters(logging.Filter):
    """Task titles, keys and error texts come from other people: one record is one log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        escaped = escape_control(message)
        if escaped != message:
            record.msg, record.args = escaped, None
        return True


logger.addFilter(_EscapeControlCharacters())

#: the service's own configuration and credentials, never given to children unless named in pass_env
_PRIVATE_ENV_PREFIXES = ("QUEUE_", "MOSAIC_")
#: ...except the service address, which an agent needs to call back (not a secret)
_PUBLIC_ENV = frozenset({"QUEUE_URL"})


def child_environment(environ: dict[str, str] | os._Environ[str], pass_env: Sequence[str] = ()) -> dict[str, str]:
    """The runner's environment minus the service's private variables (see the module doc)."""
    keep = set(pass_env) | _PUBLIC_ENV
    return {k: v for k, v in environ.items() if k in keep or not k.startswith(_PRIVATE_ENV_PREFIXES)}
