"""Read a file by local path or s3:// URI (boto3; the endpoint and region from params `s3`, credentials from
the environment)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from editthinker.config import S3Config


def is_s3(uri: str | Path) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket or not key:
        raise ValueError(f"{uri}: an s3 URI is s3://bucket/key")
    return bucket, key


def join(base: str | Path | None, path: str) -> str:
    """`path` resolved against `base` (a folder or s3:// prefix); absolute paths and URIs stay as they are."""
    if is_s3(path) or Path(path).is_absolute() or not base:
        return path
    if is_s3(base):
        return str(base).rstrip("/") + "/" + path
    return str(Path(base) / path)


class UriReader:
    """Reads local files and s3:// objects; one boto3 client, made on the first s3 read."""

    def __init__(self, s3: S3Config) -> None:
        self.s3 = s3
        self._client: Any = None

    def client(self) -> Any:
        if self._client is None:
            from editthinker.storage_s3 import make_client

            self._client = make_client(self.s3)
        return self._client

    def get(self, uri: str) -> bytes:
        """The bytes at `uri`; FileNotFoundError when there is no such file or object."""
        if is_s3(uri):
            from botocore.exceptions import ClientError

            bucket, key = split_s3(uri)
            try:
                body: bytes = self.client().get_object(Bucket=bucket, Key=key)["Body"].read()
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code in ("NoSuchKey", "404", "NotFound"):
                    raise FileNotFoundError(uri) from None
                raise
            return body
        return Path(uri).read_bytes()

    def read(self, path: str, base: str | Path | None) -> tuple[bytes | None, str | None]:
        """(bytes, None), or (None, why) for a missing or unreadable image file."""
        uri = join(base, path)
        try:
            return self.get(uri), None
        except FileNotFoundError:
            return None, f"missing image file {uri}"
        except IsADirectoryError:
            return None, f"image path {uri} is a folder"
        except OSError as exc:
            return None, f"unreadable image file {uri}: {exc}"

    def list(self, uri: str, suffixes: tuple[str, ...]) -> list[str]:
        """The files under folder or prefix `uri` with one of `suffixes`, sorted; `uri` itself if it is a file."""
        if is_s3(uri):
            bucket, _, prefix = uri[len("s3://") :].partition("/")
            if prefix.endswith(suffixes):
                return [uri]
            keys: list[str] = []
            for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                keys += [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(suffixes)]
            return [f"s3://{bucket}/{k}" for k in sorted(keys)]
        p = Path(uri)
        if p.is_file():
            return [str(p)]
        if not p.is_dir():
            raise FileNotFoundError(f"{uri}: no such file or folder")
        return sorted(str(f) for f in p.rglob("*") if f.is_file() and f.name.endswith(suffixes))
