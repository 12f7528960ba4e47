"""The `editthinker` command: one sub-command per stage, `run` for the whole factory, `report` for its HTML report.

A thin driver: each command validates params, calls the stage's `run` and prints where the output went.
dvc.yaml calls these same commands; the KFP components call the same stage functions.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from editthinker.config import ConfigError, Params, load_params

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(stderr=True)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params.yaml to validate and use")]
DEFAULT_PARAMS = Path("params.yaml")


class Layout:
    """Where each stage's output lives by default (dvc.yaml uses the same paths)."""

    trajectories = Path("data/trajectories")
    filtered = Path("data/filtered")
    sft_data = Path("data/steps/sft")
    rl_data = Path("data/steps/rl")
    validation = Path("reports/validate")
    sft_model = Path("models/sft")
    rl_model = Path("models/rl")
    evaluation = Path("reports/eval")
    registry = Path("registry")


def _params(path: Path) -> Params:
    try:
        return load_params(path)
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from None


def _done(name: str, result: Any) -> None:
    summary = {k: v for k, v in (result or {}).items() if not isinstance(v, dict | list)}
    console.print(f"[green]{name} done[/green] {json.dumps(summary, default=str)}", highlight=False)


def _stage(name: str, fn: Callable[[], Any]) -> Any:
    try:
        result = fn()
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        console.print(f"[red]{name} failed:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    _done(name, result)
    return result


@app.command()
def generate(params: ParamsOpt = DEFAULT_PARAMS, out: Path = Layout.trajectories) -> None:
    """Generate trajectories: the expert plays the thinker over every editor."""
    from editthinker.stages import generate as stage

    p = _params(params)
    _stage("generate", lambda: stage.run(p, out))


@app.command()
def prepare(params: ParamsOpt = DEFAULT_PARAMS, out: Path = Path("data/prepared")) -> None:
    """Prepare the declared sources (params sources:) into tasks, an image store and a quarantine report."""
    from editthinker import prepare as prep

    p = _params(params)
    _stage("prepare", lambda: prep.run(p, out))


@app.command("filter")
def filter_(
    params: ParamsOpt = DEFAULT_PARAMS, trajectories: Path = Layout.trajectories, out: Path = Layout.filtered
) -> None:
    """Keep trajectories whose later turns beat the first; truncate at the best turn."""
    from editthinker.stages import filter as stage

    p = _params(params)
    _stage("filter", lambda: stage.run(p, trajectories, out))


@app.command()
def split(
    params: ParamsOpt = DEFAULT_PARAMS,
    filtered: Path = Layout.filtered,
    sft_out: Path = Layout.sft_data,
    rl_out: Path = Layout.rl_data,
) -> None:
    """Unroll trajectories into step samples, balance them, split SFT / RL."""
    from editthinker.stages import split as stage

    p = _params(params)
    _stage("split", lambda: stage.run(p, filtered, sft_out, rl_out))


@app.command()
def validate(
    params: ParamsOpt = DEFAULT_PARAMS,
    trajectories: Path = Layout.trajectories,
    sft: Path = Layout.sft_data,
    rl: Path = Layout.rl_data,
    out: Path = Layout.validation,
) -> None:
    """Validate trajectories and step samples with great-expectations suites."""
    from editthinker.stages import validate as stage

    p = _params(params)
    _stage("validate", lambda: stage.run(p, trajectories, sft, rl, out))


@app.command()
def sft(params: ParamsOpt = DEFAULT_PARAMS, data: Path = Layout.sft_data, out: Path = Layout.sft_model) -> None:
    """Supervised fine-tuning of the thinker (trl SFTTrainer)."""
    from editthinker.stages import sft as stage

    p = _params(params)
    _stage("sft", lambda: stage.run(p, data, out))


@app.command()
def rl(
    params: ParamsOpt = DEFAULT_PARAMS,
    data: Path = Layout.rl_data,
    sft_checkpoint: Path = Layout.sft_model,
    out: Path = Layout.rl_model,
) -> None:
    """GRPO from the SFT checkpoint (trl GRPOTrainer) with the registered rewards."""
    from editthinker.stages import rl as stage

    p = _params(params)
    _stage("rl", lambda: stage.run(p, data, sft_checkpoint, out))


@app.command()
def evaluate(
    params: ParamsOpt = DEFAULT_PARAMS,
    sft_checkpoint: Path = Layout.sft_model,
    rl_checkpoint: Path = Layout.rl_model,
    out: Path = Layout.evaluation,
) -> None:
    """Evaluate editor alone / + expert / + SFT thinker / + RL thinker on the held-out benchmark."""
    from editthinker.stages import evaluate as stage

    p = _params(params)
    _stage("evaluate", lambda: stage.run(p, sft_checkpoint, rl_checkpoint, out))
    console.print((out / "summary.md").read_text(), highlight=False)


REGISTRY_HELP = "registry: a folder or s3://bucket/prefix (default: params promote.registry)"


@app.command()
def promote(
    params: ParamsOpt = DEFAULT_PARAMS,
    checkpoint: Path = Layout.rl_model,
    eval_dir: Path = Layout.evaluation,
    registry: Annotated[Path | None, typer.Option(help=REGISTRY_HELP)] = None,
    benchmark_report: Annotated[
        Path | None, typer.Option(help="public benchmark report (needed when params benchmarks.gate is set)")
    ] = None,
) -> None:
    """Register the checkpoint; make it champion only if it beats the editor alone and the champion, paired on
    the same items (params promote: confidence, margin, format-failure limit)."""
    from editthinker.stages import promote as stage

    p = _params(params)
    reg = registry or Path(p.promote.registry)
    _stage("promote", lambda: stage.run(p, checkpoint, eval_dir, reg, benchmark_report))


# --- `editthinker registry ...`: list, show, compare, promote, rollback, push (local or s3:// registries) -----
registry_app = typer.Typer(
    no_args_is_help=True, help="The model registry: list, show, compare, promote, rollback, push."
)
app.add_typer(registry_app, name="registry")
RegistryOpt = Annotated[str | None, typer.Option("--registry", "-r", help=REGISTRY_HELP)]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON on stdout (for scripts) instead of tables")]
ReasonOpt = Annotated[str, typer.Option(help="why: recorded in the decision log")]


def _registry_call(name: str, fn: Callable[[], Any]) -> Any:
    """Run a registry command; its expected failures (a refused request, a bad registry, S3 or hub errors)
    become one red line and exit 1."""
    from botocore.exceptions import BotoCoreError, ClientError

    from editthinker.hub import HubPushError
    from editthinker.registry import RegistryError
    from editthinker.stages.promote import PromotionRefused

    try:
        return fn()
    except (RegistryError, PromotionRefused, HubPushError, FileNotFoundError, ValueError, BotoCoreError,
            ClientError) as exc:  # fmt: skip
        console.print(f"[red]registry {name} failed:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None


def _open_registry(name: str, params: Path, registry: str | None) -> tuple[Params, Any]:
    """Params (exit 2 when they do not validate) and the registry: --registry, else params promote.registry."""
    from editthinker.registry import open_registry

    p = _params(params)
    return p, _registry_call(name, lambda: open_registry(registry or p.promote.registry, p.s3))


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


@registry_app.command("list")
def registry_list(params: ParamsOpt = DEFAULT_PARAMS, registry: RegistryOpt = None, as_json: JsonOpt = False) -> None:
    """Every version: checkpoint hash, when it was registered, metrics, git commit; * marks the champion."""
    from editthinker import registry_views as views

    p, reg = _open_registry("list", params, registry)
    rows = _registry_call("list", lambda: views.list_versions(reg))
    if as_json:
        return _print_json(rows)
    Console().print(views.versions_table(rows, p.promote.primary_metric))


@registry_app.command("show")
def registry_show(
    version: Annotated[str, typer.Argument(help="a version (v0003) or an alias (champion)")],
    params: ParamsOpt = DEFAULT_PARAMS,
    registry: RegistryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One version: its record (params, git commit, hashes), its decisions and its model card."""
    from rich.markdown import Markdown

    from editthinker import registry_views as views

    _, reg = _open_registry("show", params, registry)
    view = _registry_call("show", lambda: views.show_version(reg, version))
    if as_json:
        return _print_json(view)
    out = Console()
    out.print(views.version_table(view))
    card = view["card"]
    if not card:
        return out.print("[yellow]no model card[/yellow]")
    if card.startswith("---\n"):  # the YAML front matter as it is (markdown would read it as a rule and text)
        front, _, card = card[4:].partition("\n---\n")
        out.print(f"---\n{front}\n---", highlight=False, markup=False)
    out.print(Markdown(card))


@registry_app.command("compare")
def registry_compare(
    a: Annotated[str, typer.Argument(help="a version or alias")],
    b: Annotated[str, typer.Argument(help="another version or alias")],
    params: ParamsOpt = DEFAULT_PARAMS,
    registry: RegistryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Metric deltas (B - A) and the params values that differ between two versions."""
    from editthinker import registry_views as views

    _, reg = _open_registry("compare", params, registry)
    cmp = _registry_call("compare", lambda: views.compare_versions(reg, a, b))
    if as_json:
        return _print_json(cmp)
    out = Console()
    for table in views.comparison_tables(cmp):
        out.print(table)


@registry_app.command("promote")
def registry_promote(
    version: Annotated[str, typer.Argument(help="a registered version")],
    reason: ReasonOpt = "manual promotion",
    force: Annotated[bool, typer.Option(help="promote even if it does not beat the champion by the rule")] = False,
    params: ParamsOpt = DEFAULT_PARAMS,
    registry: RegistryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Make a registered version champion: it must beat the champion by promote.margin on the same benchmark,
    unless --force. The decision (forced or not, the rule's verdict, the reason) goes to the log."""
    from editthinker.stages import promote as stage

    p, reg = _open_registry("promote", params, registry)
    record = _registry_call("promote", lambda: stage.promote_version(p, reg, version, reason, force))
    if as_json:
        return _print_json(record)
    _done("registry promote", record)


@registry_app.command("rollback")
def registry_rollback(
    reason: ReasonOpt = "rollback",
    params: ParamsOpt = DEFAULT_PARAMS,
    registry: RegistryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Give the champion alias back to the previous champion (from the decision log), and log it."""
    from editthinker.stages import promote as stage

    _, reg = _open_registry("rollback", params, registry)
    record = _registry_call("rollback", lambda: stage.rollback(reg, reason))
    if as_json:
        return _print_json(record)
    _done("registry rollback", record)


@registry_app.command("push")
def registry_push(
    version: Annotated[str, typer.Argument(help="a version or alias")],
    repo_id: Annotated[str, typer.Option(help="the hub model repo, ORG/NAME")],
    revision: Annotated[str, typer.Option(help="the branch to commit to (created if missing)")] = "main",
    private: Annotated[bool, typer.Option(help="create the repo private (an existing repo keeps its setting)")] = False,
    params: ParamsOpt = DEFAULT_PARAMS,
    registry: RegistryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload a version (checkpoint files + model card) to a Hugging Face Hub repo. Token: HF_TOKEN only;
    endpoint: HF_ENDPOINT when set."""
    from editthinker.hub import push_version

    _, reg = _open_registry("push", params, registry)
    pushed = _registry_call("push", lambda: push_version(reg, version, repo_id, revision, private))
    if as_json:
        return _print_json(pushed)
    _done("registry push", pushed)


STAGES = ("generate", "filter", "split", "validate", "sft", "rl", "evaluate", "promote")


def _run_stage_process(stage: str, params: Path) -> tuple[float, float, int]:
    """Run one stage as its own process; (wall seconds, peak RSS in MiB, exit code)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "editthinker.cli", stage, "--params", str(params)])
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - t0, usage.ru_maxrss / 1024, proc.returncode


@app.command("run")
def run_all(params: ParamsOpt = DEFAULT_PARAMS, stats: Path = Path("reports/run_stats.json")) -> None:
    """The whole factory, stage by stage (each its own process, so its peak memory is measured)."""
    _params(params)  # fail fast on bad params, before any work
    rows: list[dict[str, Any]] = []
    for stage in STAGES:
        console.rule(f"[bold]{stage}")
        wall, rss, code = _run_stage_process(stage, params)
        rows.append({"stage": stage, "wall_s": round(wall, 2), "peak_rss_mib": round(rss, 1)})
        if code != 0:
            console.print(f"[red]stage {stage} failed (exit {code}); later stages not run[/red]")
            raise typer.Exit(code)
    table = Table(title="stage timings")
    for col in ("stage", "wall s", "peak RSS MiB"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["stage"], f"{r['wall_s']:.1f}", f"{r['peak_rss_mib']:.0f}")
    total = sum(r["wall_s"] for r in rows)
    table.add_row("total", f"{total:.1f}", f"{max(r['peak_rss_mib'] for r in rows):.0f}")
    stats.parent.mkdir(parents=True, exist_ok=True)
    stats.write_text(json.dumps({"stages": rows, "total_s": round(total, 2)}, indent=2) + "\n")
    out = Console()
    out.print(table)
    out.print((Layout.evaluation / "summary.md").read_text(), highlight=False)
    out.print(
        f"reports: {Layout.evaluation}/summary.md, {Layout.evaluation}/summary.json, "
        f"{Layout.evaluation}/score_by_turn.png, {Layout.validation}/report.md, registry: {Layout.registry}/"
    )


def _pipeline_app() -> typer.Typer:
    """pipelines/cli.py's sub-app (the `pipelines` package installs with the project), imported only when asked
    for: the stages never load kfp."""
    try:  # by name: neither the type checker nor an import of this module follows it into kfp
        module = importlib.import_module("pipelines.cli")
    except ImportError as exc:
        console.print(f"[red]error:[/red] the pipeline commands need kfp and the pipelines package ({exc})")
        raise typer.Exit(2) from None
    pipeline_app: typer.Typer = module.app
    return pipeline_app


@app.command(
    "pipeline",
    add_help_option=False,
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def pipeline(ctx: typer.Context) -> None:
    """Kubeflow pipelines: compile, submit, schedule (`editthinker pipeline --help`)."""
    command = typer.main.get_command(_pipeline_app())
    command.main(args=list(ctx.args), prog_name="editthinker pipeline", standalone_mode=True)


@app.command("edit")
def edit_one(
    image: Annotated[Path, typer.Option(help="the source image (any format PIL reads)")],
    instruction: Annotated[str, typer.Option(help="the edit instruction")],
    editor: Annotated[str, typer.Option(help="an editor name from params.editors")],
    out: Annotated[Path, typer.Option(help="output folder: turn-N.png, trace.json, index.html")],
    thinker: Annotated[str, typer.Option(help="a checkpoint folder, 'model', 'expert' or 'none'")] = "none",
    params: ParamsOpt = DEFAULT_PARAMS,
    max_turns: Annotated[int | None, typer.Option(help="default: params evaluate.max_turns")] = None,
    seed: int = 0,
    reference: Annotated[Path | None, typer.Option(help="target scene JSON (synthetic expert / judge)")] = None,
) -> None:
    """Think-while-Edit on one image: every turn's image, the trace as JSON and an HTML strip."""
    from editthinker import single_edit

    p = _params(params)
    ref = reference.read_text() if reference is not None else None
    result = _stage("edit", lambda: single_edit.run(p, image, instruction, editor, thinker, out, max_turns, seed, ref))
    console.print(f"{out}/index.html: {len(result['turns'])} turn(s), stopped: {result['stop_reason']}")


@app.command("serve-editor")
def serve_editor(
    editor: Annotated[str, typer.Option(help="an editor name from params.editors")],
    params: ParamsOpt = DEFAULT_PARAMS,
    host: str = "127.0.0.1",
    port: int = 8700,
) -> None:
    """Serve one editor from params over HTTP (POST /edit, GET /health) for `kind: http` editors."""
    from editthinker.backends.factory import build_editor
    from editthinker.backends.http_editor import EditorServer, make_app

    p = _params(params)
    cfgs = {e.name: e for e in p.editors}
    if editor not in cfgs:
        console.print(f"[red]error:[/red] editor {editor!r} is not in params.editors {sorted(cfgs)}")
        raise typer.Exit(2)
    server = EditorServer(make_app(build_editor(cfgs[editor], p.world.image_size)), host, port)
    console.print(f"serving editor {editor} on {server.url}", highlight=False)
    server.run()  # until Ctrl+C / SIGTERM (uvicorn shuts down gracefully)


# -- the release's training-data formats (release_formats.py) ------------------------------------------------
ReleaseFormat = Annotated[str, typer.Option("--format", help="llamafactory (SFT, sharegpt JSON) or easyr1 (RL jsonl)")]
TemplateOpt = Annotated[
    Path | None,
    typer.Option(help="release prompt template file ({original_instruction}, {rewritten_prompt}, two <image>)"),
]


def _release_format(fmt: str) -> Any:
    from editthinker.release_formats import FORMATS

    if fmt not in FORMATS:
        console.print(f"[red]error:[/red] --format must be one of {list(FORMATS)}, not {fmt!r}")
        raise typer.Exit(2)
    return fmt


def _template_text(path: Path | None) -> str | None:
    return None if path is None else path.read_text(encoding="utf-8")


@app.command("export")
def export_release(
    fmt: ReleaseFormat,
    out: Annotated[Path, typer.Option(help="output folder (replaced whole)")],
    data: Annotated[
        Path | None, typer.Option(help="a step-sample dataset (default: data/steps/sft, or data/steps/rl for easyr1)")
    ] = None,
    template: TemplateOpt = None,
    absolute_paths: Annotated[bool, typer.Option(help="write absolute image paths")] = False,
) -> None:
    """Step samples in a release trainer's format: LLaMA-Factory sharegpt (SFT) or EasyR1 jsonl (RL)."""
    from editthinker import release_formats as rf

    f = _release_format(fmt)
    steps = data or (Layout.rl_data if f == "easyr1" else Layout.sft_data)

    def work() -> dict[str, Any]:
        return rf.export_steps(steps, out, f, _template_text(template), absolute_paths).to_dict()

    report = _stage("export", work)
    for line in rf.summary(report):
        console.print(line, highlight=False, markup=False)
    console.print(f"{out}: {', '.join(report['files'])} (skipped records: {rf.REPORT_FILE})", highlight=False)


@app.command("import")
def import_release(
    fmt: ReleaseFormat,
    data: Annotated[Path, typer.Option(help="the release file, or the folder an export wrote")],
    out: Annotated[Path, typer.Option(help="the step-sample dataset to write")],
    image_dir: Annotated[
        Path | None, typer.Option(help="relative image paths resolve here (default: the file's folder)")
    ] = None,
    template: TemplateOpt = None,
    editor: Annotated[str, typer.Option(help="the params.editors name the rl stage's edit reward uses")] = "",
    split: Annotated[
        str | None, typer.Option(help="split column (default: sft for llamafactory, rl for easyr1)")
    ] = None,
) -> None:
    """Read a release trainer's data back into step samples (a dataset the sft and rl stages read)."""
    from editthinker import release_formats as rf

    f = _release_format(fmt)

    def work() -> dict[str, Any]:
        return rf.import_steps(data, out, f, image_dir, _template_text(template), editor, split).to_dict()

    report = _stage("import", work)
    for line in rf.summary(report):
        console.print(line, highlight=False, markup=False)


# -- public benchmarks: ImgEdit-Bench, GEdit-Bench, RISEBench, KRIS-Bench (editthinker.benchmarks) ----------
benchmark_app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Public benchmarks (imgedit, gedit, risebench, kris)."
)
app.add_typer(benchmark_app, name="benchmark")
BENCHMARK_RUNS = Path("reports/benchmarks")


def _max_turns(spec: str, default: int) -> list[int]:
    try:
        turns = [int(t) for t in spec.split(",")] if spec else [default]
    except ValueError:
        console.print(f"[red]error:[/red] --max-turns {spec!r}: give a number or a list such as 2,4,6,8")
        raise typer.Exit(2) from None
    return turns


def _print_scores(result: dict[str, Any]) -> None:
    h = result["headline"]
    ci = result["intervals"].get(h)
    c = result["counts"]
    value = f"{result['metrics'].get(h, float('nan')):.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
    console.print(
        f"{result['title']} {result['run']}: {h} ({result['scale']}) {value}; scored {c['scored']}/{c['items']}, "
        f"missing outputs {c['missing_outputs']}, missing scores {c['missing_scores']}; "
        f"judge {result['judge']['model']}, cost ${result['judge_usage'].get('cost_usd', 0):.4f}",
        highlight=False,
    )


@benchmark_app.command("run")
def benchmark_run(
    benchmark: Annotated[str, typer.Option(help="gedit, imgedit, risebench or kris")],
    editor: Annotated[str, typer.Option(help="an editor name from params.editors")],
    system: Annotated[str, typer.Option(help="editor, expert, or thinker:<checkpoint folder or model id>")] = "editor",
    data: Annotated[str, typer.Option(help="the benchmark as distributed; default params benchmarks.<name>.data")] = "",
    max_turns: Annotated[str, typer.Option(help="e.g. 5, or 2,4,6,8 for the turn ablation")] = "",
    out: Annotated[Path | None, typer.Option(help="runs folder; default reports/benchmarks/<benchmark>")] = None,
    limit: Annotated[int | None, typer.Option(help="only the first N items")] = None,
    name: Annotated[str | None, typer.Option(help="run folder name; default <editor>-<system>-t<turns>")] = None,
    score: Annotated[bool, typer.Option("--score", help="score each run when it is done")] = False,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Run the Think-while-Edit loop on a benchmark; the edits land where its official scorer reads them."""
    from functools import partial

    from editthinker.benchmarks import runner, scoring

    p = _params(params)
    root = out or BENCHMARK_RUNS / benchmark
    failed = 0
    for turns in _max_turns(max_turns, p.benchmarks.max_turns):
        summary = _stage(
            "benchmark run",
            partial(runner.run, p, benchmark, data, editor, system, turns, root, limit=limit, name=name),
        )
        failed += summary["items"]["failed"]
        console.print(f"{summary['run_dir']}: edits {summary['edits']}, critiques {summary['critiques']}")
        if score:
            _print_scores(_stage("benchmark score", partial(scoring.score_run, p, Path(summary["run_dir"]))))
    if failed:
        console.print(f"[red]{failed} items failed to edit (run.json 'failed'); run again to resume[/red]")
        raise typer.Exit(1)


@benchmark_app.command("score")
def benchmark_score(
    run: Annotated[list[Path], typer.Option(help="a run folder (repeat for several)")],
    data: Annotated[str, typer.Option(help="override the data location recorded in run.json")] = "",
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Score runs with each benchmark's judge protocol; writes scores.json and judgements.jsonl into each."""
    from functools import partial

    from editthinker.benchmarks import scoring

    p = _params(params)
    for folder in run:
        _print_scores(_stage("benchmark score", partial(scoring.score_run, p, folder, data or None)))


@benchmark_app.command("report")
def benchmark_report(
    runs: Annotated[list[Path], typer.Option(help="a folder of scored runs (repeat for several)")] = [BENCHMARK_RUNS],  # noqa: B006
    out: Annotated[Path, typer.Option(help="report folder: report.json, report.md, comparison.png")] = Path(
        "reports/benchmarks/report"
    ),
    max_turns: Annotated[int | None, typer.Option(help="turns of the main comparison; default params")] = None,
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Editor alone -> + thinker -> + expert on every benchmark, with 95% intervals, categories, turn ablation."""
    from editthinker.benchmarks.report import REPORT_MD, write_report

    p = _params(params)
    _stage("benchmark report", lambda: write_report(runs, out, max_turns or p.benchmarks.max_turns))
    Console().print((out / REPORT_MD).read_text(), highlight=False)


if __name__ == "__main__":
    app()
