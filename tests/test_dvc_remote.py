"""DVC remote on S3 (dvc-s3) against moto's S3 server on loopback: `dvc repro split`, `dvc push`, then a fresh
`git clone` + `dvc pull` gets byte-identical datasets. The remote is set up with exactly the commands
`storage_s3.dvc_remote_commands` gives users; credentials are dummy values in the environment only."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pytest
import yaml

from editthinker.config import S3Config
from editthinker.storage_s3 import dvc_remote_commands
from s3_server import loopback_s3

ROOT = Path(__file__).resolve().parents[1]
DATA = ["data/trajectories", "data/filtered", "data/steps/sft", "data/steps/rl"]
SECRET = "dummy-secret-for-moto-7f3a"

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("subprocess-heavy")]


def tree_sha256(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for d in DATA
        for p in sorted((root / d).rglob("*"))
        if p.is_file()
    }


def test_dvc_push_then_clone_and_pull_gives_identical_datasets(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo, clone = tmp_path / "repo", tmp_path / "clone"
    repo.mkdir()
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["generate"].update({"num_tasks": 12, "max_turns": 3, "shards": 2})

    with loopback_s3() as endpoint:
        bucket = f"dvc-{uuid.uuid4().hex[:12]}"
        cfg = S3Config(endpoint_url=endpoint, bucket=bucket, prefix="editthinker")
        params["s3"] = cfg.model_dump()
        (repo / "params.yaml").write_text(yaml.safe_dump(params))
        env = {
            **os.environ,
            "DVC_NO_ANALYTICS": "1",
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "PYTHONPATH": str(repo / "src"),
            "AWS_ACCESS_KEY_ID": "dummy-key-id",
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        }
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_PROFILE"):
            env.pop(var, None)
        boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
        ).create_bucket(Bucket=bucket)

        def run(*cmd: str, cwd: Path = repo) -> str:
            r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
            assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}"
            return r.stdout

        run("git", "init", "-q")
        run("git", "config", "user.email", "ci@example.invalid")
        run("git", "config", "user.name", "ci")
        run("dvc", "init", "-q")
        run("dvc", "repro", "split")
        for cmd in dvc_remote_commands(cfg):
            run(*cmd)
        run("git", "add", "-A")
        run("git", "commit", "-q", "-m", "data stages")
        run("dvc", "push", "--with-deps", "split")

        s3 = boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
        )
        pushed = s3.list_objects_v2(Bucket=bucket, Prefix="editthinker/dvc/")
        assert pushed.get("KeyCount", 0) > 0  # the cache really went to the bucket, under <prefix>/dvc/

        run("git", "clone", "-q", str(repo), str(clone), cwd=tmp_path)
        assert not any((clone / d).exists() for d in DATA)  # git holds only .gitignore and dvc.lock
        run("dvc", "pull", "--with-deps", "split", cwd=clone)  # the data stages; models were never built

    want = tree_sha256(repo)
    assert len(want) >= 8 and all(d in "".join(want) for d in DATA)
    assert tree_sha256(clone) == want
    config = (clone / ".dvc" / "config").read_text()
    assert endpoint in config and f"s3://{bucket}/editthinker/dvc" in config
    assert SECRET not in config and "dummy-key-id" not in config
