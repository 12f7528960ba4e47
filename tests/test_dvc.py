"""`dvc repro` in a temporary git repo: the data stages run through the CLI, give the same dataset as the
stage functions called directly, validate takes generate's image store as a dep, and a second `dvc repro` is a
no-op."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from editthinker.config import parse_params
from editthinker.records import read_manifest
from editthinker.stages import filter as filter_stage
from editthinker.stages import generate, split

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"generate": {"num_tasks": 16, "max_turns": 3, "shards": 2}}

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("subprocess-heavy")]


@pytest.fixture
def dvc_repo(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(ROOT / "src", repo / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["generate"].update(SMALL["generate"])
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env["PYTHONPATH"] = str(repo / "src")

    def run(*cmd):
        return subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True, text=True).stdout

    run("git", "init", "-q")
    run("git", "config", "user.email", "ci@example.invalid")
    run("git", "config", "user.name", "ci")
    run("dvc", "init", "-q")
    return repo, run, params


def test_dvc_repro_matches_direct_run_and_is_then_a_noop(dvc_repo, tmp_path):
    repo, run, params = dvc_repo
    out = run("dvc", "repro", "split")
    assert "Running stage 'generate'" in out and "Running stage 'split'" in out

    p = parse_params(params)
    direct = tmp_path / "direct"
    generate.run(p, direct / "traj")
    filter_stage.run(p, direct / "traj", direct / "filt")
    split.run(p, direct / "filt", direct / "sft", direct / "rl")
    for part in ("sft", "rl"):
        assert (
            read_manifest(repo / f"data/steps/{part}")["dataset_sha256"]
            == read_manifest(direct / part)["dataset_sha256"]
        )

    again = run("dvc", "repro", "split")
    assert "Running stage" not in again

    # validate takes generate's image store (data/trajectories/images, inside generate's output) as a dep of
    # its own: DVC accepts a dep inside another stage's out and records the store's hash in dvc.lock
    checked = run("dvc", "repro", "validate")
    assert "Running stage 'validate'" in checked and "Running stage 'generate'" not in checked
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    store_dep = [d for d in lock["stages"]["validate"]["deps"] if d["path"] == "data/trajectories/images"]
    assert len(store_dep) == 1 and store_dep[0]["md5"].endswith(".dir")
    assert "Running stage" not in run("dvc", "repro", "validate")

    params["split"]["seed"] = params["split"]["seed"] + 1  # only the split stage reads this section
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    changed = run("dvc", "repro", "split")
    assert "Running stage 'split'" in changed and "Running stage 'generate'" not in changed


def test_bad_params_fail_the_stage_with_the_key_named(dvc_repo):
    repo, run, params = dvc_repo
    params["generate"]["num_taks"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(subprocess.CalledProcessError) as exc:
        run("dvc", "repro", "generate")
    assert "generate.num_taks: unknown key" in exc.value.stderr + exc.value.stdout
    assert not (repo / "data/trajectories").exists()
