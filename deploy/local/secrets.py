"""The local servers' credentials, generated once per servers directory, and the environment they run in.

    <dir>/secrets.json   (mode 0600)  postgres, prefect_db, mlflow_db, prefect_auth, mlflow_admin, mlflow_flask

Each is 32 random bytes (``secrets.token_urlsafe``), URL-safe because some go into connection URLs.
They survive ``staged servers down`` with the data they protect and go with ``down --purge``.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

FILE = "secrets.json"
NAMES = ("postgres", "prefect_db", "mlflow_db", "prefect_auth", "mlflow_admin", "mlflow_flask")

# What a server or the worker inherits from the shell that ran `staged servers up`: enough to run
# (PATH, locale, home, Python path, thread and GPU settings), nothing else. The user's cloud keys, tokens
# and other secrets stay out of every process that deployments can reach.
_KEEP = {"PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV", "GIT_PYTHON_REFRESH"}
_KEEP_PREFIXES = ("LC_", "OMP_", "MKL_", "CUDA_", "NVIDIA_", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def load_or_create(dir: Path) -> dict[str, str]:
    """The servers' secrets: read from ``<dir>/secrets.json``, or generated and written there (0600)."""
    path = dir / FILE
    if path.is_file():
        found = json.loads(path.read_text())
        if set(NAMES) <= set(found):
            return found
    created = {name: secrets.token_urlsafe(32) for name in NAMES}
    tmp = path.with_name(FILE + ".partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(created, f, indent=1)
    os.replace(tmp, path)
    return created


def base_env() -> dict[str, str]:
    """The allow-listed part of this process's environment (see ``_KEEP``)."""
    return {k: v for k, v in os.environ.items() if k in _KEEP or k.startswith(_KEEP_PREFIXES)}
