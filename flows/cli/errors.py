"""How the command line reports a user's mistake: one line on stderr, then exit (2: bad input, 1: a failure)."""

from __future__ import annotations

import sys
from typing import NoReturn

from tasks.store import redact


def fail(message: str, code: int = 2) -> NoReturn:
    """Every message goes through ``redact``: a URI in it never shows its credentials."""
    print(f"staged: error: {redact(message)}", file=sys.stderr)
    raise SystemExit(code)


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return redact(text[0] if text else type(err).__name__)[:300]
