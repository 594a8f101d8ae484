"""Refuse to start the compose stack with placeholder or weak secrets: ``python -m deploy.check_secrets``.

Run by the one-shot ``secrets-check`` service that every other service of deploy/docker-compose.yml waits
for. Each variable in ``SECRETS`` must be set, at least ``MIN_LENGTH`` characters, not a placeholder
(``change-me`` and friends) and URL-safe (they go into connection URLs); the Prefect auth string must be
``user:password`` with such a password. Exit 0 when all pass, else 2 with one line per problem. Imports no
project code (deploy/ is standalone): the image runs it before anything else starts.
"""

from __future__ import annotations

import os
import re
import sys

SECRETS = ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "MINIO_APP_PASSWORD", "MLFLOW_ADMIN_PASSWORD")
SECRETS += ("MLFLOW_FLASK_SECRET_KEY",)
AUTH_STRINGS = ("PREFECT_AUTH_STRING",)  # user:password
MIN_LENGTH = 16
_PLACEHOLDER = re.compile(r"change|example|placeholder|secret|password|default|^(.)\1*$|^(test|admin|qwerty)", re.I)
_URL_SAFE = re.compile(r"^[A-Za-z0-9._~-]+$")  # unreserved URL characters: no escaping anywhere


def problems(env: dict[str, str]) -> list[str]:
    """What is wrong with the secrets in ``env`` (empty: nothing)."""
    found = []

    def weak(name: str, value: str) -> str | None:
        if len(value) < MIN_LENGTH:
            return f"{name} is shorter than {MIN_LENGTH} characters"
        if _PLACEHOLDER.search(value):
            return f"{name} looks like a placeholder; generate one: openssl rand -hex 24"
        if not _URL_SAFE.match(value):
            return f"{name} has characters that are not URL-safe (use letters, digits, . _ ~ -)"
        return None

    for name in SECRETS:
        value = env.get(name, "")
        if not value:
            found.append(f"{name} is not set")
        elif reason := weak(name, value):
            found.append(reason)
    for name in AUTH_STRINGS:
        user, _, password = env.get(name, "").partition(":")
        if not user or not password:
            found.append(f"{name} must be user:password")
        elif reason := weak(f"{name}'s password", password):
            found.append(reason)
    return found


def main() -> int:
    found = problems(dict(os.environ))
    for line in found:
        print(f"staged: refusing to start: {line}", file=sys.stderr)
    return 2 if found else 0


if __name__ == "__main__":
    sys.exit(main())
