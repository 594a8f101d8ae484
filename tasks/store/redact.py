"""Credentials out of anything shown: one function for every URI that is printed, logged, tagged or published.

    redact("http://admin:s3cret@mlflow:5000/#/models") == "http://mlflow:5000/#/models"

It takes a URI or any text with URIs in it (an error message, a markdown artifact), drops the user-info
part (``user:password@``) of each, and blanks the values of query parameters that carry secrets
(``?token=…``, ``X-Amz-Signature=…``). Text without either comes back unchanged.
"""

from __future__ import annotations

import re

_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@?#'\"<>]*@")
_SECRET_PARAM = re.compile(
    r"(?P<key>[?&](?:[A-Za-z0-9_.-]*(?:password|passwd|secret|token|signature|credential|api[_-]?key)"
    r"[A-Za-z0-9_.-]*)=)[^&#\s'\"<>]*",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with the user-info of every URI removed and secret query values replaced by ``***``."""
    return _SECRET_PARAM.sub(r"\g<key>***", _USERINFO.sub(r"\g<scheme>", text))
