"""DVC as its users expect: `.dvc/` is committed, so a fresh `git clone` runs `dvc repro` without `dvc init`;
the reports are committed to git (datasets and checkpoints are not), so `dvc metrics diff` and `dvc plots diff`
compare two commits; the score-by-turn plot draws one line per system against the turn; the training stages'
DVCLive curves are DVC plots and metrics."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from editthinker.stages.evaluate import SYSTEMS

ROOT = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())
TINY = {
    "generate": {"num_tasks": 16, "max_turns": 3, "shards": 2},
    "sft": {"max_steps": 3, "batch_size": 2},
    "rl": {"max_steps": 2, "batch_size": 2, "num_generations": 2, "select": {"num_tasks": 3, "max_turns": 2}},
    "evaluate": {"num_tasks": 4, "max_turns": 2},
    "thinker": {"max_new_tokens": 24},
}
REPO_FILES = ["dvc.yaml", ".gitignore", ".dvcignore", ".dvc/config", ".dvc/.gitignore"]


def test_dvc_config_is_committed_without_analytics_or_remote_credentials() -> None:
    config = configparser.ConfigParser()
    config.read_string((ROOT / ".dvc/config").read_text())
    assert config.get("core", "analytics") == "false"
    assert not [s for s in config.sections() if s.startswith("'remote")], "no remote is committed"
    assert not any(k in (ROOT / ".dvc/config").read_text() for k in ("secret", "password", "access_key", "token"))
    # what `dvc init` writes: the per-machine parts stay out of git
    assert (ROOT / ".dvc/.gitignore").read_text().split() == ["/config.local", "/tmp", "/cache"]


def test_git_tracks_the_reports_and_ignores_data_models_and_run_specific_files() -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")

    def ignored(path: str) -> bool:
        r = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT)
        assert r.returncode in (0, 1), r
        return r.returncode == 0

    for path in ("data/trajectories/manifest.json", "models/sft/model.safetensors", ".dvc/cache/x", ".dvc/tmp/x",
                 "reports/run_stats.json", "reports/run.html", "reports/training/sft/params.yaml",
                 "dvc_plots/index.html"):  # fmt: skip
        assert ignored(path), path
    committed = ["reports/eval/metrics.json", "reports/eval/score_by_turn.json", "reports/eval/summary.md"]
    committed += ["reports/training/sft/metrics.json", "reports/training/rl/plots/metrics/reward.tsv"]
    committed += ["reports/validate/report.json", "dvc.lock", ".dvc/config"]
    for path in committed:
        assert not ignored(path), path


def test_score_by_turn_plots_every_system_against_the_turn() -> None:
    [plot] = [p["score_by_turn"] for p in DVC["plots"] if isinstance(p, dict) and "score_by_turn" in p]
    assert plot["x"] == "turn"
    assert plot["y"] == {"reports/eval/score_by_turn.json": list(SYSTEMS)}
    evaluate_outs = {next(iter(o)) if isinstance(o, dict) else o: o for o in DVC["stages"]["evaluate"]["outs"]}
    assert "reports/eval/score_by_turn.json" in evaluate_outs  # an output of the stage that writes it
    for stage in ("sft", "rl"):
        s = DVC["stages"][stage]
        assert s["cmd"].startswith("EDITTHINKER_TRAINING_LOGS=reports/training editthinker ")
        [metrics] = s["metrics"]
        assert metrics == {f"reports/training/{stage}/metrics.json": {"cache": False}}
        [curves] = s["plots"]
        assert curves == {f"reports/training/{stage}/plots/metrics": {"cache": False, "x": "step"}}


@pytest.mark.slow
@pytest.mark.xdist_group("subprocess-heavy")
def test_fresh_clone_repro_then_metrics_and_plots_diff_across_commits(tmp_path: Path) -> None:
    """The whole factory (tiny) by `dvc repro` in a fresh clone with no `dvc init`; commit; change the
    benchmark; `dvc repro` again; commit; then diff the two commits' metrics and plots."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    pytest.importorskip("dvclive", reason="dvclive (requirements.lock) is not installed")
    origin, clone = tmp_path / "origin", tmp_path / "clone"
    origin.mkdir()
    shutil.copytree(ROOT / "src", origin / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in REPO_FILES:
        (origin / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, origin / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (origin / "params.yaml").write_text(yaml.safe_dump(params))
    path = os.pathsep.join(p for p in (str(clone / "src"), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": path}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env.pop("EDITTHINKER_TRAINING_LOGS", None)

    def run(*cmd: str, cwd: Path = clone) -> str:
        r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
        assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return r.stdout

    def commit(message: str, cwd: Path = clone) -> None:
        run("git", "add", "-A", cwd=cwd)
        run("git", "-c", "user.email=ci@example.invalid", "-c", "user.name=ci", "commit", "-qm", message, cwd=cwd)

    run("git", "init", "-q", cwd=origin)
    commit("factory", cwd=origin)
    run("git", "clone", "-q", str(origin), str(clone), cwd=tmp_path)
    assert (clone / ".dvc/config").is_file() and not (clone / ".dvc/cache").exists()

    out = run("dvc", "repro")  # no `dvc init`
    assert "Running stage 'promote'" in out
    new = sorted(run("git", "status", "--porcelain", "--untracked-files=all").splitlines())
    assert all(line.startswith("?? ") for line in new)
    new_files = [line[3:] for line in new]
    assert all(f == "dvc.lock" or f.startswith("reports/") for f in new_files), new_files  # no data or models
    reports = ["reports/eval/metrics.json", "reports/eval/score_by_turn.json", "reports/training/sft/metrics.json"]
    reports += ["reports/training/sft/plots/metrics/loss.tsv", "reports/training/rl/plots/metrics/reward.tsv"]
    for f in reports:
        assert f in new_files, f
    assert not any(f.endswith("params.yaml") for f in new_files)  # DVCLive's dump of the trainer arguments
    loss = (clone / "reports/training/sft/plots/metrics/loss.tsv").read_text().split()
    assert loss[:2] == ["step", "loss"] and len(loss) == 2 + 2 * TINY["sft"]["max_steps"]  # one row per step
    commit("first run")

    params["evaluate"].update(seed=params["evaluate"]["seed"] + 1, num_tasks=6)
    (clone / "params.yaml").write_text(yaml.safe_dump(params))
    again = run("dvc", "repro")
    assert "Running stage 'evaluate'" in again and "Running stage 'sft'" not in again
    commit("another benchmark")

    diff = json.loads(run("dvc", "metrics", "diff", "HEAD~1", "HEAD", "--json"))
    changed = diff["reports/eval/metrics.json"]
    assert f"{SYSTEMS[-1]}.overall" in changed or f"{SYSTEMS[-1]}.success_rate" in changed, changed
    assert all(v["old"] is not None and v["new"] is not None for v in changed.values())  # both commits read
    assert "reports/training/sft/metrics.json" not in diff  # training did not run again

    plots = json.loads(run("dvc", "plots", "diff", "HEAD~1", "HEAD", "--json"))["data"]
    [by_turn] = plots["score_by_turn"]
    assert by_turn["revisions"] == ["HEAD~1", "HEAD"]
    spec = by_turn["content"]
    assert spec["encoding"]["x"]["field"] == "turn"
    values = spec["data"]["values"]
    assert {(v["rev"], v["field"]) for v in values} == {(r, s) for r in ("HEAD~1", "HEAD") for s in SYSTEMS}
    assert {v["turn"] for v in values} == {1, 2}
    assert all(v["dvc_inferred_y_value"] == v[v["field"]] for v in values)  # y is the system's score, not turn
    [curve] = plots["reports/training/sft/plots/metrics/loss.tsv"]
    assert curve["content"]["encoding"]["x"]["field"] == "step"
    assert {v["rev"] for v in curve["content"]["data"]["values"]} == {"HEAD~1", "HEAD"}
