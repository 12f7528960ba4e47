"""Artifacts and registry aliases on S3 (or any S3-compatible store), through boto3.

Layout under `s3://<bucket>/<prefix>/`:

    artifacts/<name>/<upload-id>/<relative path>   the files of one upload of an artifact directory
    artifacts/<name>/_COMPLETE                     written LAST: the upload id and every file's sha256 and size
    aliases/<alias>.json                           a registry alias (e.g. champion), changed only by CAS
    dvc/                                           the DVC remote (see `dvc_remote_commands`)

Atomic for readers: an artifact exists only once its `_COMPLETE` marker does, and the marker is written
with `IfNoneMatch="*"` after every file, so a reader sees the whole artifact or nothing; a crashed upload
leaves only files under an upload id no marker names. Artifacts are immutable: a second upload of the same
name returns the existing one if the content is the same and fails otherwise.

Aliases change by compare-and-swap with S3 conditional writes (`IfMatch=<etag>` to replace, `IfNoneMatch="*"`
to create; AWS S3 has honoured both on PutObject since 2024): a promotion that raced another one gets 412,
re-reads the alias and decides again, so two promotions cannot both win and neither update is lost. Not every
S3-compatible store honours them (s3rver ignores both and stores the object anyway), so `probe_conditional_writes`
checks a store with a probe object under `probes/` before anything relies on it (registry.S3Registry does).

Credentials are never arguments, params or file contents here: boto3's default chain finds them
(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance or pod role).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError

from editthinker.config import S3Config
from editthinker.storage import atomic_dir, sha256_file

log = logging.getLogger(__name__)

COMPLETE = "_COMPLETE"
DVC_REMOTE_NAME = "store"
_CHUNK = 1 << 20

Alias = dict[str, Any]


class ArtifactNotFound(FileNotFoundError):
    """No complete artifact under that name (absent, or its upload never finished)."""


class ArtifactConflict(RuntimeError):
    """An artifact of that name already exists with different content."""


class AliasConflict(RuntimeError):
    """A compare-and-swap kept losing to concurrent writers."""


def _precondition_failed(exc: ClientError) -> bool:
    err = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return err.get("Code") in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)


def _missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound")


def _not_implemented(exc: ClientError) -> bool:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return exc.response.get("Error", {}).get("Code") == "NotImplemented" or status == 501


def make_client(cfg: S3Config) -> Any:
    """A boto3 S3 client for `cfg`. No credential arguments: the default chain (environment, profile, role)
    supplies them."""
    return boto3.session.Session().client("s3", endpoint_url=cfg.endpoint_url, region_name=cfg.region)


class ProbeResult(NamedTuple):
    """What `S3Store.probe_conditional_writes` found: honoured, or the first condition the store ignored."""

    honoured: bool
    detail: str


def file_index(local: Path) -> dict[str, dict[str, Any]]:
    """{relative posix path: {sha256, size}} of every file under a directory."""
    local = Path(local)
    files = sorted(p for p in local.rglob("*") if p.is_file())
    return {p.relative_to(local).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size} for p in files}


class S3Store:
    """Artifacts and aliases under `s3://<cfg.bucket>/<cfg.prefix>/`."""

    def __init__(self, cfg: S3Config, client: Any = None, transfer: TransferConfig | None = None) -> None:
        if not cfg.bucket:
            raise ValueError("s3.bucket is empty: set it in params.yaml")
        self.cfg = cfg
        self.client = client or make_client(cfg)
        self.transfer = transfer or TransferConfig()

    def key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.cfg.prefix, *parts) if p.strip("/"))

    def uri(self, *parts: str) -> str:
        return f"s3://{self.cfg.bucket}/{self.key(*parts)}"

    def _json_body(self, body: Any, *parts: str) -> Any:
        """Parse an object's body as JSON; a body that is not names its object."""
        try:
            return json.loads(body.read())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{self.uri(*parts)}: not valid JSON ({exc})") from None

    @staticmethod
    def _check_name(name: str) -> str:
        parts = name.strip("/").split("/")
        if not name.strip("/") or any(p in ("", ".", "..", COMPLETE) for p in parts):
            raise ValueError(f"bad artifact name {name!r}: use a/b/c path segments, no '.', '..' or {COMPLETE}")
        return name.strip("/")

    # --- artifacts -----------------------------------------------------------------------------------------
    def _marker(self, name: str) -> dict[str, Any] | None:
        name = self._check_name(name)
        try:
            body = self.client.get_object(Bucket=self.cfg.bucket, Key=self.key("artifacts", name, COMPLETE))["Body"]
        except ClientError as exc:
            if _missing(exc):
                return None
            raise
        return dict(self._json_body(body, "artifacts", name, COMPLETE))

    def exists(self, name: str) -> bool:
        return self._marker(name) is not None

    def upload_dir(self, local: Path, name: str) -> dict[str, Any]:
        """Upload a directory as artifact `name`; return its marker. The marker goes last, so readers see the
        artifact whole or not at all. Re-uploading identical content is a no-op; different content fails."""
        local = Path(local)
        if not local.is_dir():
            raise NotADirectoryError(f"{local} is not a directory")
        files = file_index(local)
        existing = self._marker(name)
        if existing is not None:
            return self._same_or_conflict(name, existing, files)
        upload_id = uuid.uuid4().hex
        for rel in files:
            self.client.upload_file(
                str(local / rel), self.cfg.bucket, self.key("artifacts", name, upload_id, rel), Config=self.transfer
            )
        marker = {"name": name, "upload_id": upload_id, "files": files}
        try:
            self.client.put_object(
                Bucket=self.cfg.bucket,
                Key=self.key("artifacts", name, COMPLETE),
                Body=json.dumps(marker, indent=2, sort_keys=True).encode(),
                ContentType="application/json",
                IfNoneMatch="*",
            )
        except ClientError as exc:
            if not _precondition_failed(exc):
                raise
            self._delete_upload(name, upload_id, files)  # another upload of this name completed first
            winner = self._marker(name)
            if winner is None:
                raise
            return self._same_or_conflict(name, winner, files)
        log.info("uploaded %d files to s3://%s/%s", len(files), self.cfg.bucket, self.key("artifacts", name))
        return marker

    def _same_or_conflict(self, name: str, marker: dict[str, Any], files: dict[str, Any]) -> dict[str, Any]:
        if marker["files"] != files:
            raise ArtifactConflict(f"artifact {name!r} already exists on S3 with different content")
        return marker

    def _delete_upload(self, name: str, upload_id: str, files: dict[str, Any]) -> None:
        keys = [{"Key": self.key("artifacts", name, upload_id, rel)} for rel in files]
        for i in range(0, len(keys), 1000):
            self.client.delete_objects(Bucket=self.cfg.bucket, Delete={"Objects": keys[i : i + 1000]})

    def download_dir(self, name: str, local: Path) -> Path:
        """Download artifact `name` into `local`, replacing it whole (storage.atomic_dir) once every file is
        there and matches its sha256. An artifact without its marker is absent: ArtifactNotFound."""
        marker = self._marker(name)
        if marker is None:
            raise ArtifactNotFound(f"no complete artifact {name!r} under s3://{self.cfg.bucket}/{self.key()}")
        local = Path(local)
        with atomic_dir(local) as tmp:
            for rel, meta in marker["files"].items():
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                key = self.key("artifacts", name, marker["upload_id"], rel)
                self.client.download_file(self.cfg.bucket, key, str(dest), Config=self.transfer)
                if sha256_file(dest) != meta["sha256"]:
                    raise OSError(f"s3://{self.cfg.bucket}/{key}: sha256 differs from the artifact's marker")
        return local

    # --- aliases (compare-and-swap) ------------------------------------------------------------------------
    def get_alias(self, alias: str) -> tuple[Alias | None, str | None]:
        """(value, etag) of an alias; (None, None) when it does not exist."""
        try:
            r = self.client.get_object(Bucket=self.cfg.bucket, Key=self.key("aliases", f"{alias}.json"))
        except ClientError as exc:
            if _missing(exc):
                return None, None
            raise
        value = self._json_body(r["Body"], "aliases", f"{alias}.json")
        if not isinstance(value, dict):
            raise ValueError(f"{self.uri('aliases', f'{alias}.json')}: expected a JSON object, found {value!r:.80}")
        return value, str(r["ETag"])

    def cas_alias(self, alias: str, value: Alias, expected_etag: str | None) -> str | None:
        """Write the alias only if it still has `expected_etag` (None: only if it does not exist yet).
        Return the new etag, or None when another writer got there first."""
        cond = {"IfMatch": expected_etag} if expected_etag is not None else {"IfNoneMatch": "*"}
        try:
            r = self.client.put_object(
                Bucket=self.cfg.bucket,
                Key=self.key("aliases", f"{alias}.json"),
                Body=json.dumps(value, sort_keys=True).encode(),
                ContentType="application/json",
                **cond,
            )
        except ClientError as exc:
            if _precondition_failed(exc) or (expected_etag is not None and _missing(exc)):
                return None
            raise
        return str(r["ETag"])

    def update_alias(
        self, alias: str, decide: Callable[[Alias | None], Alias | None], max_attempts: int = 20
    ) -> Alias | None:
        """Read the alias, let `decide(current)` return its new value (None: leave it), and write it by CAS;
        on a lost race read again and decide again. Return the alias's value afterwards."""
        for _ in range(max_attempts):
            current, etag = self.get_alias(alias)
            new = decide(current)
            if new is None:
                return current
            if self.cas_alias(alias, new, etag) is not None:
                return new
            log.info("alias %r changed under us; reading it again", alias)
        raise AliasConflict(f"alias {alias!r}: gave up after {max_attempts} lost compare-and-swaps")

    # --- does the store honour conditional writes? ----------------------------------------------------------
    def probe_conditional_writes(self) -> ProbeResult:
        """Check, with a probe object of its own (`probes/conditional-writes-<uuid>.json`, deleted afterwards),
        that the store refuses a create over an existing object (`IfNoneMatch="*"`) and a replace with a wrong
        ETag (`IfMatch`), and accepts a replace with the right ETag. The checks run one after another, so the
        answer does not depend on timing. Other errors (credentials, network) are raised."""
        key = self.key("probes", f"conditional-writes-{uuid.uuid4().hex}.json")
        try:
            return self._probe(key)
        finally:
            self.client.delete_object(Bucket=self.cfg.bucket, Key=key)

    def _probe(self, key: str) -> ProbeResult:
        etag = self._put(key, b'{"probe": 1}', IfNoneMatch="*")
        if etag is None:
            return ProbeResult(False, "a create with IfNoneMatch='*' of a fresh key was refused")
        wrong = '"' + "0" * 32 + '"'
        for cond, what in (({"IfNoneMatch": "*"}, "IfNoneMatch='*' over an existing object"),
                           ({"IfMatch": wrong}, "IfMatch with a wrong ETag")):  # fmt: skip
            if self._put(key, b'{"probe": 2}', **cond) is not None:
                return ProbeResult(False, f"a write with {what} was accepted (it must fail with 412)")
        if self._put(key, b'{"probe": 3}', IfMatch=etag) is None:
            return ProbeResult(False, "a write with IfMatch and the object's own ETag was refused")
        return ProbeResult(True, "IfMatch and IfNoneMatch are honoured")

    def _put(self, key: str, body: bytes, **cond: str) -> str | None:
        """PutObject with a condition: the new ETag, or None when the store refused it (412/409, or 501: a store
        that does not implement the condition refuses the write, which is safe but useless)."""
        try:
            r = self.client.put_object(Bucket=self.cfg.bucket, Key=key, Body=body, **cond)
        except ClientError as exc:
            if _precondition_failed(exc) or _not_implemented(exc):
                return None
            raise
        return str(r["ETag"])


class S3UnitMirror:
    """generate's finished units on S3, so a retried pipeline step (which starts on an empty disk) resumes them:
    unit `<resume key>/<unit>` is artifact `units/<resume key>/<unit>`, its images artifact `.../<unit>-images`
    (uploaded first: a unit whose marker exists has its images). Artifacts are immutable and a unit's bytes are
    a function of the params, so a unit pushed twice (two retries racing) is one artifact, and a unit that
    differs from what S3 holds fails loudly (`ArtifactConflict`)."""

    def __init__(self, store: S3Store) -> None:
        self.store = store

    @classmethod
    def for_params(cls, cfg: S3Config) -> S3UnitMirror | None:
        """The mirror of params `s3`, or None when no bucket is configured (units stay on the local disk)."""
        return cls(S3Store(cfg)) if cfg.bucket else None

    def pull(self, name: str, unit_dir: Path, staged: Path) -> bool:
        if not self.store.exists(f"units/{name}"):
            return False
        staged.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=staged.parent) as tmp:  # same disk: each image lands whole
            if self.store.exists(f"units/{name}-images"):
                got = self.store.download_dir(f"units/{name}-images", Path(tmp) / "images")
                for f in sorted(p for p in got.rglob("*") if p.is_file()):
                    dest = staged / f.relative_to(got)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(f, dest)
        self.store.download_dir(f"units/{name}", unit_dir)
        return True

    def push(self, name: str, unit_dir: Path, staged: Path, images: list[str]) -> None:
        if images:
            with tempfile.TemporaryDirectory(dir=staged.parent) as tmp:
                for sha in images:
                    rel = Path(sha[:2]) / sha  # the staged layout (generate._staged_path)
                    (Path(tmp) / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(staged / rel, Path(tmp) / rel)
                self.store.upload_dir(Path(tmp), f"units/{name}-images")
        self.store.upload_dir(unit_dir, f"units/{name}")


def unit_mirror(s3_json: str) -> S3UnitMirror | None:
    """The unit mirror a pipeline step is given as params `s3` in JSON ("" or no bucket: none)."""
    return S3UnitMirror.for_params(S3Config.model_validate_json(s3_json)) if s3_json else None


def dvc_remote_commands(cfg: S3Config, name: str = DVC_REMOTE_NAME) -> list[list[str]]:
    """The `dvc remote` commands that make `s3://<bucket>/<prefix>/dvc` the default remote. No credentials:
    DVC (dvc-s3) reads them from the same environment as boto3."""
    if not cfg.bucket:
        raise ValueError("s3.bucket is empty: set it in params.yaml")
    url = "s3://" + "/".join(p for p in (cfg.bucket, cfg.prefix, "dvc") if p)
    cmds = [["dvc", "remote", "add", "--force", "-d", name, url]]
    if cfg.endpoint_url:
        cmds.append(["dvc", "remote", "modify", name, "endpointurl", cfg.endpoint_url])
    cmds.append(["dvc", "remote", "modify", name, "region", cfg.region])
    return cmds
