"""`editthinker benchmark run | score | report` end to end on loopback, and the KFP benchmark component."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from benchmark_fixtures import write_world_gedit
from editthinker.backends.synthetic import SyntheticEditor
from editthinker.cli import app
from editthinker.config import ThinkerModelConfig
from editthinker.protocol import format_expert_answer
from editthinker.roles import EditRequest
from openai_stub import Answer, StubOpenAIServer


def _expert_or_judge(body):
    """The expert (system prompt first) is never satisfied and refines; the GEdit judge answers 7 and 8."""
    if body["messages"][0]["role"] == "system":
        text = body["messages"][1]["content"][-1]["text"]
        previous = re.search(r"given\): (.*)", text).group(1)
        return Answer(format_expert_answer(False, "not yet", previous + " now"))
    return Answer('{"score": [7, 8], "reasoning": "fine"}')


def _params(tmp_path: Path, base_url: str, benchmarks: str = "") -> Path:
    api = f"base_url: '{base_url}', max_retries: 0, timeout_s: 5"
    text = (
        "editors:\n  - {name: painter, kind: synthetic, profile: painter}\n"
        f"expert: {{kind: openai, model: stub-expert, {api}, cache_dir: '{tmp_path / 'expert-cache'}'}}\n"
        f"benchmarks:\n  judge: {{{api}, cache_dir: '{tmp_path / 'judge-cache'}'}}\n"
        "  bootstrap_resamples: 100\n  batch_size: 3\n" + benchmarks
    )
    (tmp_path / "params.yaml").write_text(text)
    return tmp_path / "params.yaml"


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_run_score_report_with_the_synthetic_painter_and_an_api_expert(tmp_path):
    tasks = write_world_gedit(tmp_path / "gedit")
    out, common = tmp_path / "runs", ["--benchmark", "gedit", "--data", str(tmp_path / "gedit"), "--editor", "painter"]
    with StubOpenAIServer(respond=_expert_or_judge) as srv:
        params = str(_params(tmp_path, srv.base_url))
        _cli("benchmark", "run", *common, "--out", str(out), "--score", "--params", params)
        _cli("benchmark", "run", *common, "--system", "expert", "--max-turns", "2,3", "--out", str(out),
             "--params", params)  # fmt: skip
        runs = ["--run", str(out / "painter-expert-t2"), "--run", str(out / "painter-expert-t3")]
        scored = _cli("benchmark", "score", *runs, "--params", params)
        report = _cli("benchmark", "report", "--runs", str(out), "--out", str(tmp_path / "report"), "--max-turns", "3",
                      "--params", params)  # fmt: skip
    # the editor alone: the painter's own edit of each source, where GEdit's scorer reads it
    painter = SyntheticEditor("painter", "painter", 64)
    from editthinker.world.scene import render_png

    for i, t in enumerate(tasks):
        folder = out / "painter-editor-t1" / "fullset" / t.op.op / "en"
        src = render_png(t.source, 64)
        assert (folder / f"w{i}_SRCIMG.png").read_bytes() == src
        assert (folder / f"w{i}.png").read_bytes() == painter.edit([EditRequest(src, t.instruction, 0)])[0]
    run3 = json.loads((out / "painter-expert-t3" / "run.json").read_text())
    assert run3["mean_turns"] == 3 and run3["edits"] == {"computed": 4, "cached": 8}  # turns 1-2 from the t2 run
    assert run3["api_usage"]["expert"]["calls"] == 4  # only turn 3's critiques were new
    assert "scored 4/4" in scored and "judge gpt-4.1" in scored
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [r["system"] for r in data["rows"]] == ["editor", "expert"]
    assert data["rows"][1]["results"]["gedit"]["max_turns"] == 3
    # SC = min(7, 8), PQ = min(7, 8), O = sqrt(7 * 7) for every item and turn
    assert data["ablation"] == {"painter / expert": {"gedit": {"2": 7.0, "3": 7.0}}}
    assert "7.00 -> 7.00" in report and "Turn ablation" in report
    assert (tmp_path / "report" / "comparison.png").is_file() and (tmp_path / "report" / "turn_ablation.png").is_file()


@pytest.mark.slow  # ~45 s here: torch and transformers load
def test_run_with_a_trained_thinker_checkpoint(tmp_path):
    from editthinker.models.tiny_vlm import MODEL_KIND, build_tiny_thinker
    from editthinker.models.vlm import save_thinker

    write_world_gedit(tmp_path / "gedit", n=2)
    model, processor = build_tiny_thinker(ThinkerModelConfig(hidden_size=64, num_heads=4, max_new_tokens=12), seed=1)
    save_thinker(model, processor, tmp_path / "rl", MODEL_KIND)
    with StubOpenAIServer(respond=_expert_or_judge) as srv:
        params = str(_params(tmp_path, srv.base_url))
        _cli("benchmark", "run", "--benchmark", "gedit", "--data", str(tmp_path / "gedit"), "--editor", "painter",
             "--system", f"thinker:{tmp_path / 'rl'}", "--max-turns", "2", "--out", str(tmp_path / "runs"),
             "--params", params)  # fmt: skip
    run = json.loads((tmp_path / "runs" / "painter-thinker-rl-t2" / "run.json").read_text())
    assert run["system"] == {"kind": "thinker", "thinker": str(tmp_path / "rl"), "label": "thinker-rl"}
    assert run["critiques"]["computed"] == 2  # the thinker was asked about every item's first edit
    traces = [
        json.loads(x) for x in (tmp_path / "runs" / "painter-thinker-rl-t2" / "traces.jsonl").read_text().splitlines()
    ]
    assert all(t["turns"][0]["critique"] is not None for t in traces)  # random weights: any verdict


def test_cli_errors_are_clear(tmp_path):
    (tmp_path / "params.yaml").write_text("editors:\n  - {name: painter, kind: synthetic, profile: painter}\n")
    base = [
        "benchmark",
        "run",
        "--editor",
        "painter",
        "--data",
        str(tmp_path),
        "--params",
        str(tmp_path / "params.yaml"),
    ]
    r = CliRunner().invoke(app, [*base, "--benchmark", "mmbench"])
    assert r.exit_code == 1 and "unknown benchmark 'mmbench'" in r.output
    r = CliRunner().invoke(app, [*base, "--benchmark", "gedit", "--max-turns", "two"])
    assert r.exit_code == 2 and "--max-turns" in r.output
    r = CliRunner().invoke(
        app, ["benchmark", "score", "--run", str(tmp_path), "--params", str(tmp_path / "params.yaml")]
    )
    assert r.exit_code == 1 and "not a benchmark run" in " ".join(r.output.split())


def test_benchmark_component_compiles(tmp_path):
    from kfp import compiler

    from components.benchmark.component import benchmark

    path = tmp_path / "benchmark.yaml"
    compiler.Compiler().compile(benchmark, str(path))
    text = path.read_text()
    for needle in ("system.Markdown", "system.Metrics", "system.Model", "run_step", "params_json"):
        assert needle in text


@pytest.mark.slow  # ~1 min: a kfp.local subprocess task
@pytest.mark.filterwarnings("ignore:.*non-Python base image.*:RuntimeWarning")
def test_benchmark_component_runs_under_kfp_local(tmp_path, monkeypatch):
    """The component as the train pipeline would run it: a Model input, the runs, the Metrics and the report."""

    from kfp import dsl, local
    from kfp.dsl import Model

    from components.benchmark.component import benchmark
    from pipelines.factory import params_json

    write_world_gedit(tmp_path / "gedit", n=2)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")  # not used: systems [editor] only
    with StubOpenAIServer(respond=_expert_or_judge) as srv:
        from editthinker.config import load_params

        extra = f"  systems: [editor]\n  gedit: {{data: '{tmp_path / 'gedit'}'}}\n"
        p = load_params(_params(tmp_path, srv.base_url, extra))

        def one(params_json, ckpt_uri):
            ckpt = dsl.importer(artifact_uri=ckpt_uri, artifact_class=Model, reimport=False)
            benchmark(params_json=params_json, benchmark="gedit", checkpoint=ckpt.output)

        one.__annotations__ = {"params_json": str, "ckpt_uri": str}  # real types: this module defers annotations
        one = dsl.pipeline(name="one-benchmark")(one)

        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
        one(params_json=params_json(p, "benchmark"), ckpt_uri=str(tmp_path / "ckpt"))
    (metrics_file,) = [p for p in (tmp_path / "kfp").rglob("metrics") if p.is_file()]
    metrics = json.loads(metrics_file.read_text())
    assert metrics["gedit_painter_editor_overall"] == 7.0 and metrics["gedit_painter_editor_scored_fraction"] == 1.0
    (report,) = [p for p in (tmp_path / "kfp").rglob("report") if p.is_file()]  # the Markdown artifact
    assert "| painter | editor | 7.00 [7.00, 7.00] |" in report.read_text()


def test_pipeline_step_runs_scores_and_reports_one_benchmark(tmp_path):
    from editthinker.benchmarks.step import run_step
    from editthinker.config import load_params

    write_world_gedit(tmp_path / "gedit", n=3)
    with StubOpenAIServer(respond=_expert_or_judge) as srv:
        p = load_params(_params(tmp_path, srv.base_url, f"  gedit: {{data: '{tmp_path / 'gedit'}'}}\n"))
        out = run_step(p, "gedit", None, tmp_path / "step")  # no checkpoint: the editor alone and the expert
    assert {k for k in out["metrics"] if not k.endswith(("_ci_low", "_ci_high"))} == {
        "gedit_painter_editor_overall", "gedit_painter_expert_overall",
        "gedit_painter_editor_scored_fraction", "gedit_painter_expert_scored_fraction",
    }  # fmt: skip
    assert out["metrics"]["gedit_painter_expert_overall"] == 7.0 and out["failed"] == 0
    assert (tmp_path / "step" / "report" / "report.md").is_file()
    assert (tmp_path / "step" / "runs" / "painter-expert-t5" / "scores.json").is_file()


@pytest.mark.slow  # ~1 min: diffusers
def test_run_with_a_tiny_diffusers_editor_on_jpeg_sources(tmp_path):
    """A real editing pipeline (tiny, random) on ImgEdit's JPEG sources of several sizes."""
    from benchmark_fixtures import IMGEDIT, IMGEDIT_SIZES, write_imgedit
    from tiny_editors import save_tiny

    write_imgedit(tmp_path / "imgedit")
    save_tiny("instruct-pix2pix", tmp_path / "p2p")
    (tmp_path / "params.yaml").write_text(
        f"editors:\n  - {{name: p2p, kind: diffusers, pipeline: instruct-pix2pix, model: '{tmp_path / 'p2p'}', "
        "num_inference_steps: 2}\n"
    )
    _cli("benchmark", "run", "--benchmark", "imgedit", "--data", str(tmp_path / "imgedit"), "--editor", "p2p",
         "--out", str(tmp_path / "runs"), "--params", str(tmp_path / "params.yaml"))  # fmt: skip
    from PIL import Image

    for key, (rel, _, _) in IMGEDIT.items():
        with Image.open(tmp_path / "runs" / "p2p-editor-t1" / "images" / f"{key}.png") as im:
            assert im.format == "PNG" and im.size == IMGEDIT_SIZES[rel]
