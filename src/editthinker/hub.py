"""Push a registered version to a Hugging Face Hub model repo: the checkpoint folder with its model card as README.md.

The uploader is anything with HfApi's `create_repo`, `create_branch` and `upload_folder` (the `HubApi`
protocol), so tests pass a fake; by default it is `huggingface_hub.HfApi` with the token from the HF_TOKEN
environment variable only (never params, never a token file) and the endpoint from HF_ENDPOINT when set. Network
failures come back as a HubPushError naming the endpoint and the repo.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

from editthinker.model_card import CARD_FILE
from editthinker.registry import RegistryBackend

TOKEN_ENV = "HF_TOKEN"
ENDPOINT_ENV = "HF_ENDPOINT"


class HubPushError(RuntimeError):
    """A push that could not start (no token, offline mode) or that the hub refused or could not be reached for."""


class HubApi(Protocol):
    """The part of huggingface_hub.HfApi a push uses."""

    def create_repo(self, repo_id: str, *, private: bool | None = ..., repo_type: str | None = ...,
                    exist_ok: bool = ...) -> Any: ...  # fmt: skip
    def create_branch(self, repo_id: str, *, branch: str, repo_type: str | None = ..., exist_ok: bool = ...) -> Any: ...
    def upload_folder(self, *, repo_id: str, folder_path: str | Path, commit_message: str | None = ...,
                      repo_type: str | None = ..., revision: str | None = ...) -> Any: ...  # fmt: skip


def make_hf_api() -> HubApi:
    """huggingface_hub.HfApi with the token from HF_TOKEN and the endpoint from HF_ENDPOINT (default: the Hub)."""
    token = os.environ.get(TOKEN_ENV)
    if not token:
        raise HubPushError(f"set {TOKEN_ENV} to a Hugging Face token with write access to push (it is read from the "
                           f"environment only)")  # fmt: skip
    from huggingface_hub import HfApi, constants

    if constants.is_offline_mode():
        raise HubPushError("huggingface_hub is in offline mode (HF_HUB_OFFLINE is set): unset it to push")
    return HfApi(endpoint=os.environ.get(ENDPOINT_ENV) or None, token=token, library_name="editthinker")


def _check_repo_id(repo_id: str) -> str:
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts):
        raise HubPushError(f"repo id {repo_id!r}: expected ORG/NAME")
    return repo_id


def push_version(
    reg: RegistryBackend,
    ref: str,
    repo_id: str,
    revision: str = "main",
    private: bool = False,
    api: HubApi | None = None,
) -> dict[str, Any]:
    """Upload version `ref` (its checkpoint files, lineage.json and README.md model card) to the model repo `repo_id` at
    `revision` (a branch, created when it is not main), creating the repo if needed (private when asked; an
    existing repo keeps its visibility). Returns what was pushed. A version without a card is refused."""
    repo_id = _check_repo_id(repo_id)
    rec = reg.registered(ref)
    version = str(rec["version"])
    if reg.card(version) is None:
        raise HubPushError(f"{version} has no model card (registered before cards existed); not pushing it bare")
    api = api if api is not None else make_hf_api()
    endpoint = getattr(api, "endpoint", None) or "the hub"
    with reg.local_copy(version) as folder:
        if not (folder / CARD_FILE).is_file():
            raise HubPushError(f"{version}: {CARD_FILE} missing from its files")
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        message = f"editthinker registry {version}: checkpoint {rec.get('checkpoint_sha256', '')[:12]}"
        try:
            api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
            if revision != "main":
                api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
            commit = api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                commit_message=message,
                repo_type="model",
                revision=revision,
            )
        except HubPushError:
            raise
        except Exception as exc:  # httpx / huggingface_hub errors: say where and what, keep the cause
            raise HubPushError(f"pushing {version} to {repo_id}@{revision} on {endpoint} failed: {exc}") from exc
    return {
        "version": version,
        "repo_id": repo_id,
        "revision": revision,
        "private": private,
        "files": files,
        "commit": str(getattr(commit, "oid", "") or getattr(commit, "commit_url", "") or commit),
    }
