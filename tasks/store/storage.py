"""Where checkpoints live: a local directory (default) or an S3 bucket, behind one small interface.

    open_storage("/abs/dir" | "file:///abs/dir" | "s3://bucket/prefix", max_attempts) -> Storage

Every ``put`` is atomic: a reader sees the whole object or nothing. Locally that is write to
``<name>.<writer>.partial`` (one name per writer), fsync, rename, fsync the directory; on S3 an
object (or a completed multipart upload) appears whole. Checkpoints build on this by writing their
manifest last (tasks/store/checkpoint.py).

S3 endpoint and credentials come from the standard AWS environment variables or profile
(``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``, else ``MLFLOW_S3_ENDPOINT_URL``, so one setting
serves MLflow's artifacts and the checkpoints). Retries are botocore's own (``standard`` mode,
exponential backoff on connection errors, throttling and 5xx); once they are spent a
:class:`StorageError` names the endpoint in one line.
"""

from __future__ import annotations

import io
import os
import re
import secrets
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse, urlsplit

from models.errors import UserError

BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class StorageError(OSError):
    """A storage operation failed for good (after retries); the message is one line and names the endpoint."""


class StorageUnusable(StorageError, UserError):
    """Storage the user must fix (a missing bucket, a local path that cannot be a directory); one line."""


class Storage(Protocol):
    uri: str

    def check(self) -> None:
        """Reach the storage once, before a run: a one-line StorageError (StorageUnusable: the user's to fix)."""
        ...

    def put(self, key: str, data: bytes) -> None: ...
    def get(self, key: str) -> bytes: ...
    def list(self, prefix: str) -> list[str]: ...
    def delete(self, keys: list[str]) -> None: ...


def check_uri(uri: str) -> str:
    """Validate a storage URI; raise ValueError with a one-line reason. Credentials in it are refused."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if "@" in parsed.netloc:
            raise ValueError("credentials do not belong in storage.uri; use the AWS environment variables or a profile")
        if not BUCKET.match(parsed.netloc):
            raise ValueError(f"{uri!r} is not s3://bucket/prefix with a valid bucket name")
    elif parsed.scheme not in ("", "file"):
        raise ValueError(f"{uri!r}: unsupported scheme {parsed.scheme!r} (use a local path, file:// or s3://)")
    return uri


def _make_dirs(directory: Path) -> list[Path]:
    """``mkdir -p``; returns the parents of the directories it created (whose entries must be synced)."""
    missing = []
    while not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
    return [d.parent for d in missing]


def fsync(path: Path) -> None:
    """Flush a file, or a folder's entries (a rename into it, say), to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalStorage:
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.uri = str(self.root)

    def check(self) -> None:
        """The directory, or the nearest existing folder that would hold it, is a writable directory."""
        existing = next(p for p in (self.root, *self.root.parents) if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise StorageUnusable(f"storage {self.uri}: {existing} is not a writable directory")

    def put(self, key: str, data: bytes) -> None:
        path = self.root / key
        # one temporary name per writer: two processes writing the same key never share a half-written file
        tmp = path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")
        try:
            created = _make_dirs(path.parent)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            for directory in [path.parent, *created]:  # the rename, and each new directory entry, reach the disk
                fsync(directory)
        except OSError:
            tmp.unlink(missing_ok=True)  # a full disk must not keep the half-written file
            raise

    def get(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix
        if not base.is_dir():
            return []
        return sorted(
            str(p.relative_to(self.root)) for p in base.rglob("*") if p.is_file() and not p.name.endswith(".partial")
        )

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            (self.root / key).unlink(missing_ok=True)
        for key in keys:  # drop emptied directories, deepest first
            parent = (self.root / key).parent
            while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent


def s3_client(max_attempts: int = 5):
    """A boto3 S3 client with botocore's standard retry mode and bounded timeouts."""
    import boto3
    from botocore.config import Config

    endpoint = None
    if not (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")):
        endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None
    config = Config(
        retries={"total_max_attempts": max_attempts, "mode": "standard"}, connect_timeout=5, read_timeout=60
    )
    return boto3.client("s3", endpoint_url=endpoint, config=config)


class S3Storage:
    def __init__(self, uri: str, max_attempts: int = 5):
        parsed = urlparse(check_uri(uri))
        self.uri, self.bucket, self.prefix = uri.rstrip("/"), parsed.netloc, parsed.path.strip("/")
        self.client = s3_client(max_attempts)
        self.endpoint = self.client.meta.endpoint_url

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _fail(self, op: str, key: str, err: Exception) -> StorageError:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        return StorageError(f"S3 endpoint {self.endpoint}: {op} s3://{self.bucket}/{self._key(key)} failed: {reason}")

    def check(self) -> None:
        """Reach the bucket once (after botocore's retries); a one-line StorageError otherwise."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchBucket"):
                raise StorageUnusable(f"S3 endpoint {self.endpoint}: bucket {self.bucket!r} does not exist") from None
            raise self._fail("head", "", e) from None
        except BotoCoreError as e:
            raise self._fail("head", "", e) from None

    def put(self, key: str, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:  # upload_fileobj goes multipart above 8 MB; the object appears only when the upload completes
            self.client.upload_fileobj(io.BytesIO(data), self.bucket, self._key(key))
        except (BotoCoreError, ClientError) as e:
            raise self._fail("put", key, e) from None

    def get(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(f"s3://{self.bucket}/{self._key(key)}") from None
            raise self._fail("get", key, e) from None
        except BotoCoreError as e:
            raise self._fail("get", key, e) from None

    def list(self, prefix: str) -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        start = len(self._key(""))
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix))
            return sorted(obj["Key"][start:] for page in pages for obj in page.get("Contents", []))
        except (BotoCoreError, ClientError) as e:
            raise self._fail("list", prefix, e) from None

    def delete(self, keys: list[str]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            for i in range(0, len(keys), 1000):
                objects = [{"Key": self._key(k)} for k in keys[i : i + 1000]]
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})
        except (BotoCoreError, ClientError) as e:
            raise self._fail("delete", keys[0], e) from None


def open_storage(uri: str, max_attempts: int = 5) -> Storage:
    if uri.startswith("s3://"):
        return S3Storage(uri, max_attempts)
    return LocalStorage(urlparse(uri).path if uri.startswith("file://") else uri)


def local_dir(uri: str) -> Path | None:
    """The directory an artifact URI names on this machine (``file://`` or a plain path), else None."""
    parts = urlsplit(uri)
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    return Path(uri) if not parts.scheme and Path(uri).is_absolute() else None
