"""How the command line reports a user's mistake: one line on stderr, then exit (2: bad input, 1: a failure)."""

from __future__ import annotations

import sys
from typing import NoReturn
from urllib.parse import urlsplit


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"staged: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


def safe_uri(uri: str) -> str:
    """A URI as safe to print: no user or password."""
    parts = urlsplit(uri)
    if not parts.hostname:
        return uri
    return parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")).geturl()
