"""Where the repository is, for tests in any folder."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
