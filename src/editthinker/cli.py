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
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from editthinker import __version__
from editthinker.config import ConfigError, Params, load_params, params_yaml
from editthinker.stages import STAGES
from editthinker.summaries import describe

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(stderr=True)

DEFAULT_PARAMS = Path("params.yaml")
ParamsOpt = Annotated[
    list[Path] | None,
    typer.Option("--params", "-p", help="params file; repeat to layer a recipe over it, later wins [params.yaml]"),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="KEY=VALUE over the params files (dotted key, YAML value, e.g. sft.learning_rate=1e-5)"),
]
RestartOpt = Annotated[
    bool, typer.Option("--restart", help="train from the start instead of resuming from the run's last checkpoint")
]


def _opt(text: str, *names: str) -> Any:
    """A typer option with its help text (every option has one; a test walks the commands)."""
    return typer.Option(*names, help=text)


class Layout:
    """Where each stage's output lives by default (dvc.yaml uses the same paths)."""

    trajectories = Path("data/trajectories")
    images = Path("data/trajectories/images")  # the image store every dataset of a run refers to (generate's)
    prepared = Path("data/prepared")
    filtered = Path("data/filtered")
    sft_data = Path("data/steps/sft")
    rl_data = Path("data/steps/rl")
    validation = Path("reports/validate")
    sft_model = Path("models/sft")
    rl_model = Path("models/rl")
    evaluation = Path("reports/eval")
    training_logs = Path("reports/training")  # DVCLive curves, per training stage
    registry = Path("registry")
    run_stats = Path("reports/run_stats.json")
    report = Path("reports/run.html")


def _git_commit() -> str | None:
    """`git describe --always --dirty` of the checkout this package's source is tracked in, if it is."""
    here = Path(__file__).resolve().parent
    try:
        tracked = subprocess.run(
            ["git", "-C", str(here), "ls-files", "--error-unmatch", Path(__file__).name], capture_output=True
        )
        if tracked.returncode != 0:
            return None
        out = subprocess.run(
            ["git", "-C", str(here), "describe", "--always", "--dirty", "--abbrev=12"], capture_output=True, text=True
        )
    except OSError:  # no git on this machine
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _version(value: bool) -> None:
    if not value:
        return
    from editthinker.lineage import code_version

    commit = _git_commit()
    typer.echo(f"editthinker {__version__}")
    typer.echo(f"code version {code_version()}")
    typer.echo(f"git commit {commit}" if commit else "git commit: not in a git checkout")
    raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version,
            is_eager=True,
            help="print the package version, the code version (a digest of the source) and the git commit; exit",
        ),
    ] = False,
) -> None:
    """EditThinker Factory: build, train, evaluate and promote a Think-while-Edit thinker."""


def _params(paths: list[Path] | None, sets: list[str] | None = None) -> Params:
    """The params files layered in order (default params.yaml), then each --set; validated as one model."""
    try:
        return load_params(*(paths or [DEFAULT_PARAMS]), overrides=sets or [])
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from None


def _done(name: str, result: Any, outputs: Sequence[str | Path] = ()) -> None:
    line = describe(name, result, outputs)
    console.print(f"[green]{name} done:[/green]" + line.removeprefix(f"{name} done:"), highlight=False, soft_wrap=True)


def _stage(name: str, fn: Callable[[], Any], outputs: Sequence[str | Path] = ()) -> Any:
    try:
        result = fn()
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        console.print(f"[red]{name} failed:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    _done(name, result, outputs)
    return result


TrajectoriesOpt = Annotated[Path, _opt("trajectories dataset (one parquet row per turn)")]
SftDataOpt = Annotated[Path, _opt("SFT step samples dataset")]
RlDataOpt = Annotated[Path, _opt("RL step samples dataset")]
SftCheckpointOpt = Annotated[Path, _opt("SFT thinker checkpoint folder")]
RlCheckpointOpt = Annotated[Path, _opt("RL thinker checkpoint folder")]
EvalDirOpt = Annotated[Path, _opt("evaluation folder (summary.json, summary.md, score_by_turn.png)")]
ImagesOpt = Annotated[
    Path, _opt("the image store the dataset's rows refer to (checked against the one its manifest names)")
]


@app.command()
def generate(
    params: ParamsOpt = None,
    set_: SetOpt = None,
    out: Annotated[Path, _opt("output trajectories dataset (its image store in <out>/images)")] = Layout.trajectories,
    tasks: Annotated[
        Path | None, _opt("a folder 'editthinker prepare' wrote: generate its tasks (default: the synthetic world)")
    ] = None,
    restart: Annotated[
        bool, _opt("start over: drop the finished units an earlier (killed or stopped) run left", "--restart")
    ] = False,
) -> None:
    """Generate trajectories: the expert plays the thinker over every editor. A rerun resumes the finished units."""
    from editthinker.stages import generate as stage

    p = _params(params, set_)
    # a reached generate.budget fails too (exit 1), its message saying what was spent and how to continue
    _stage("generate", lambda: stage.run(p, out, restart=restart, tasks=tasks), [out])


@app.command()
def prepare(
    params: ParamsOpt = None,
    set_: SetOpt = None,
    out: Annotated[
        Path, _opt("output: tasks/, images/ (by sha256), quarantine.jsonl, prepared.json")
    ] = Layout.prepared,
) -> None:
    """Prepare the declared sources (params sources:) into tasks, an image store and a quarantine report."""
    from editthinker import prepare as prep

    p = _params(params, set_)
    _stage("prepare", lambda: prep.run(p, out))


@app.command("filter")
def filter_(
    params: ParamsOpt = None,
    set_: SetOpt = None,
    trajectories: TrajectoriesOpt = Layout.trajectories,
    out: Annotated[Path, _opt("output: the kept trajectories, truncated at their best turn")] = Layout.filtered,
) -> None:
    """Keep trajectories whose later turns beat the first; truncate at the best turn."""
    from editthinker.stages import filter as stage

    p = _params(params, set_)
    _stage("filter", lambda: stage.run(p, trajectories, out), [out])


@app.command()
def split(
    params: ParamsOpt = None,
    set_: SetOpt = None,
    filtered: Annotated[Path, _opt("filtered trajectories dataset")] = Layout.filtered,
    sft_out: Annotated[Path, _opt("output SFT step samples dataset")] = Layout.sft_data,
    rl_out: Annotated[Path, _opt("output RL step samples dataset")] = Layout.rl_data,
) -> None:
    """Unroll trajectories into step samples, balance them, split SFT / RL."""
    from editthinker.stages import split as stage

    p = _params(params, set_)
    _stage("split", lambda: stage.run(p, filtered, sft_out, rl_out), [sft_out, rl_out])


@app.command()
def validate(
    params: ParamsOpt = None,
    set_: SetOpt = None,
    trajectories: TrajectoriesOpt = Layout.trajectories,
    sft: SftDataOpt = Layout.sft_data,
    rl: RlDataOpt = Layout.rl_data,
    out: Annotated[Path, _opt("output report folder (report.json, report.md)")] = Layout.validation,
    images: ImagesOpt = Layout.images,
) -> None:
    """Validate trajectories and step samples with great-expectations suites."""
    from editthinker.stages import validate as stage

    p = _params(params, set_)
    _stage("validate", lambda: stage.run(p, trajectories, sft, rl, out, images), [out])


@app.command()
def sft(
    params: ParamsOpt = None,
    set_: SetOpt = None,
    data: SftDataOpt = Layout.sft_data,
    out: Annotated[Path, _opt("output checkpoint folder")] = Layout.sft_model,
    images: ImagesOpt = Layout.images,
    restart: RestartOpt = False,
) -> None:
    """Supervised fine-tuning of the thinker (trl SFTTrainer); resumes a killed run with the same inputs and params."""
    from editthinker.stages import sft as stage

    p = _params(params, set_)
    _stage("sft", lambda: stage.run(p, data, out, images, restart=restart), [out])


@app.command()
def rl(
    params: ParamsOpt = None,
    set_: SetOpt = None,
    data: RlDataOpt = Layout.rl_data,
    sft_checkpoint: Annotated[Path, _opt("SFT thinker checkpoint folder to start from")] = Layout.sft_model,
    out: Annotated[Path, _opt("output checkpoint folder")] = Layout.rl_model,
    images: ImagesOpt = Layout.images,
    restart: RestartOpt = False,
) -> None:
    """GRPO from the SFT checkpoint (trl GRPOTrainer) with the registered rewards; resumes like sft."""
    from editthinker.stages import rl as stage

    p = _params(params, set_)
    _stage("rl", lambda: stage.run(p, data, sft_checkpoint, out, images, restart=restart), [out])


@app.command()
def evaluate(
    params: ParamsOpt = None,
    set_: SetOpt = None,
    sft_checkpoint: SftCheckpointOpt = Layout.sft_model,
    rl_checkpoint: Annotated[Path, _opt("RL thinker checkpoint folder (the challenger)")] = Layout.rl_model,
    out: Annotated[Path, _opt("output folder (summary.json, summary.md, score_by_turn.png)")] = Layout.evaluation,
) -> None:
    """Evaluate editor alone / + expert / + SFT thinker / + RL thinker on the held-out benchmark."""
    from editthinker.stages import evaluate as stage

    p = _params(params, set_)
    _stage("evaluate", lambda: stage.run(p, sft_checkpoint, rl_checkpoint, out), [out])
    console.print((out / "summary.md").read_text(), highlight=False)


REGISTRY_HELP = "registry: a folder or s3://bucket/prefix (default: params promote.registry)"


@app.command()
def promote(
    params: ParamsOpt = None,
    set_: SetOpt = None,
    checkpoint: Annotated[Path, _opt("the challenger's checkpoint folder")] = Layout.rl_model,
    eval_dir: EvalDirOpt = Layout.evaluation,
    registry: Annotated[Path | None, typer.Option(help=REGISTRY_HELP)] = None,
    benchmark_report: Annotated[
        Path | None, typer.Option(help="public benchmark report (needed when params benchmarks.gate is set)")
    ] = None,
) -> None:
    """Register the checkpoint; make it champion only if it beats the editor alone and the champion, paired on
    the same items (params promote: confidence, margin, format-failure limit)."""
    from editthinker.stages import promote as stage

    p = _params(params, set_)
    reg = registry or Path(p.promote.registry)
    _stage("promote", lambda: stage.run(p, checkpoint, eval_dir, reg, benchmark_report), [reg])


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


def _open_registry(
    name: str, params: list[Path] | None, sets: list[str] | None, registry: str | None
) -> tuple[Params, Any]:
    """Params (exit 2 when they do not validate) and the registry: --registry, else params promote.registry."""
    from editthinker.registry import open_registry

    p = _params(params, sets)
    return p, _registry_call(name, lambda: open_registry(registry or p.promote.registry, p.s3))


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


@registry_app.command("list")
def registry_list(
    params: ParamsOpt = None, set_: SetOpt = None, registry: RegistryOpt = None, as_json: JsonOpt = False
) -> None:
    """Every version: checkpoint hash, when it was registered, metrics, git commit; * marks the champion."""
    from editthinker import registry_views as views

    p, reg = _open_registry("list", params, set_, registry)
    rows = _registry_call("list", lambda: views.list_versions(reg))
    if as_json:
        return _print_json(rows)
    Console().print(views.versions_table(rows, p.promote.primary_metric))


@registry_app.command("show")
def registry_show(
    version: Annotated[str, typer.Argument(help="a version (v0003) or an alias (champion)")],
    params: ParamsOpt = None,
    set_: SetOpt = None,
    registry: RegistryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """One version: its record (params, git commit, hashes), its decisions and its model card."""
    from rich.markdown import Markdown

    from editthinker import registry_views as views

    _, reg = _open_registry("show", params, set_, registry)
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
    params: ParamsOpt = None,
    set_: SetOpt = None,
    registry: RegistryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Metric deltas (B - A) and the params values that differ between two versions."""
    from editthinker import registry_views as views

    _, reg = _open_registry("compare", params, set_, registry)
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
    params: ParamsOpt = None,
    set_: SetOpt = None,
    registry: RegistryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Make a registered version champion: it must beat the champion by promote.margin on the same benchmark,
    unless --force. The decision (forced or not, the rule's verdict, the reason) goes to the log."""
    from editthinker.stages import promote as stage

    p, reg = _open_registry("promote", params, set_, registry)
    record = _registry_call("promote", lambda: stage.promote_version(p, reg, version, reason, force))
    if as_json:
        return _print_json(record)
    _done("registry promote", record)


@registry_app.command("rollback")
def registry_rollback(
    reason: ReasonOpt = "rollback",
    params: ParamsOpt = None,
    set_: SetOpt = None,
    registry: RegistryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Give the champion alias back to the previous champion (from the decision log), and log it."""
    from editthinker.stages import promote as stage

    _, reg = _open_registry("rollback", params, set_, registry)
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
    params: ParamsOpt = None,
    set_: SetOpt = None,
    registry: RegistryOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload a version (checkpoint files + model card) to a Hugging Face Hub repo. Token: HF_TOKEN only;
    endpoint: HF_ENDPOINT when set."""
    from editthinker.hub import push_version

    _, reg = _open_registry("push", params, set_, registry)
    pushed = _registry_call("push", lambda: push_version(reg, version, repo_id, revision, private))
    if as_json:
        return _print_json(pushed)
    _done("registry push", pushed)


# What each stage reads and writes under the default layout (dvc.yaml's deps and outs; a test holds them equal).
# promote writes to params' promote.registry; Layout.registry is its default.
STAGE_IO: dict[str, tuple[tuple[Path, ...], tuple[Path, ...]]] = {
    "generate": ((), (Layout.trajectories,)),
    "filter": ((Layout.trajectories,), (Layout.filtered,)),
    "split": ((Layout.filtered,), (Layout.sft_data, Layout.rl_data)),
    "validate": ((Layout.trajectories, Layout.sft_data, Layout.rl_data, Layout.images), (Layout.validation,)),
    "sft": ((Layout.sft_data, Layout.validation, Layout.images), (Layout.sft_model,)),
    "rl": ((Layout.rl_data, Layout.sft_model, Layout.images), (Layout.rl_model,)),
    "evaluate": ((Layout.sft_model, Layout.rl_model), (Layout.evaluation,)),
    "promote": ((Layout.rl_model, Layout.evaluation / "summary.json"), (Layout.registry,)),
}


def _stage_io(p: Params) -> dict[str, tuple[list[str], list[str]]]:
    """STAGE_IO as the run will see it: paths as strings, promote writing to params' registry."""
    io = {s: ([str(x) for x in ins], [str(x) for x in outs]) for s, (ins, outs) in STAGE_IO.items()}
    io["promote"] = (io["promote"][0], [p.promote.registry])
    return io


def _within(path: str, outputs: Iterable[str]) -> bool:
    """Is `path` one of `outputs` or inside one (reports/eval/summary.json is in reports/eval)?"""
    return any(Path(path) == Path(o) or Path(path).is_relative_to(o) for o in outputs)


def _missing_inputs(stages: Sequence[str], io: dict[str, tuple[list[str], list[str]]]) -> list[tuple[str, str]]:
    """(stage, path) for every input of `stages` that neither exists nor is written by an earlier one of them."""
    made: list[str] = []
    missing = []
    for stage in stages:
        ins, outs = io[stage]
        missing += [(stage, x) for x in ins if not _within(x, made) and not Path(x).exists()]
        made += outs
    return missing


def _maker(path: str, io: dict[str, tuple[list[str], list[str]]]) -> str:
    """The stage that writes `path`."""
    return next(s for s, (_, outs) in io.items() if _within(path, outs))


def _select_stages(first: str | None, last: str | None) -> list[str]:
    i = STAGES.index(first) if first else 0
    j = STAGES.index(last) if last else len(STAGES) - 1
    if i > j:
        console.print(f"[red]error:[/red] --from {first} comes after --to {last} (stages: {', '.join(STAGES)})")
        raise typer.Exit(2)
    return list(STAGES[i : j + 1])


def _print_plan(
    stages: Sequence[str], io: dict[str, tuple[list[str], list[str]]], params_args: list[str], stats: Path, report: Path
) -> None:
    made: list[str] = []
    with_ = " ".join(params_args)
    typer.echo(f"dry run: {len(stages)} stage(s) would run with {with_}, each in its own process; nothing was run")
    for k, stage in enumerate(stages, 1):
        ins, outs = io[stage]
        notes = []
        for x in ins:
            state = "exists" if Path(x).exists() else "MISSING"
            state = f"written by {_maker(x, io)} in this run" if _within(x, made) else state
            notes.append(f"{x} ({state})")
        typer.echo(f"{k}. {stage}")
        typer.echo(f"     reads:  {', '.join(notes) or 'params only'}")
        typer.echo(f"     writes: {', '.join(outs)}")
        made += outs
    typer.echo(f"then: {stats} (timings of these stages) and {report} (the run report)")


def _params_args(paths: list[Path] | None, sets: list[str] | None) -> list[str]:
    """The --params / --set options that give a stage process the same params."""
    args = [a for p in paths or [DEFAULT_PARAMS] for a in ("--params", str(p))]
    return args + [a for s in sets or [] for a in ("--set", s)]


def _run_stage_process(stage: str, params_args: list[str]) -> tuple[float, float, int]:
    """Run one stage as its own process; (wall seconds, peak RSS in MiB, exit code). Training curves go where
    dvc.yaml puts them (reports/training/<stage>), so `dvc repro` after a run finds every output."""
    var = "EDITTHINKER_TRAINING_LOGS"  # = training.TRAINING_LOGS_ENV (not imported here: it loads torch)
    env = {**os.environ, var: os.environ.get(var, str(Layout.training_logs))}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "editthinker.cli", stage, *params_args], env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - t0, usage.ru_maxrss / 1024, proc.returncode


def _stage_name(value: str | None) -> str | None:
    if value is not None and value not in STAGES:
        raise typer.BadParameter(f"{value!r} is not a stage; stages: {', '.join(STAGES)}")
    return value


@app.command("run")
def run_all(
    params: ParamsOpt = None,
    set_: SetOpt = None,
    stats: Annotated[Path, _opt("where to write the stage timings and peak memory")] = Layout.run_stats,
    from_: Annotated[
        str | None,
        typer.Option(
            "--from",
            metavar="STAGE",
            callback=_stage_name,
            show_default=False,
            help=f"start at this stage (its inputs must exist; stages: {', '.join(STAGES)}); default: the first",
        ),
    ] = None,
    to: Annotated[
        str | None,
        typer.Option(
            metavar="STAGE", callback=_stage_name, show_default=False, help="stop after this stage; default: the last"
        ),
    ] = None,
    dry_run: Annotated[
        bool, _opt("print the stages that would run, with what they read and write; run nothing", "--dry-run")
    ] = False,
    report: Annotated[Path, _opt("the HTML run report written at the end")] = Layout.report,
) -> None:
    """The factory, stage by stage (each its own process, so its peak memory is measured), then the run report."""
    p = _params(params, set_)  # fail fast on bad params, before any work
    stages = _select_stages(from_, to)
    io = _stage_io(p)
    if dry_run:
        _print_plan(stages, io, _params_args(params, set_), stats, report)
    missing = _missing_inputs(stages, io)
    if missing:
        for stage, path in missing:
            console.print(
                f"[red]error:[/red] {path} is missing: {stage} reads it and {_maker(path, io)} writes it; "
                f"start at {_maker(path, io)} or earlier (--from)",
                highlight=False,
                soft_wrap=True,
            )
        raise typer.Exit(2)
    if dry_run:
        return
    rows: list[dict[str, Any]] = []
    failed = 0
    for stage in stages:
        console.rule(f"[bold]{stage}")
        wall, rss, code = _run_stage_process(stage, _params_args(params, set_))
        rows.append({"stage": stage, "wall_s": round(wall, 2), "peak_rss_mib": round(rss, 1), "exit_code": code})
        if code != 0:
            console.print(f"[red]stage {stage} failed (exit {code}); later stages not run[/red]")
            failed = code
            break
    total = sum(r["wall_s"] for r in rows)
    stats.parent.mkdir(parents=True, exist_ok=True)
    stats.write_text(json.dumps({"stages": rows, "total_s": round(total, 2)}, indent=2) + "\n")
    _write_report(report, Path("."), stats)
    if failed:
        console.print(f"run report: {report}", highlight=False)
        raise typer.Exit(failed)
    table = Table(title="stage timings")
    for col in ("stage", "wall s", "peak RSS MiB"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["stage"], f"{r['wall_s']:.1f}", f"{r['peak_rss_mib']:.0f}")
    table.add_row("total", f"{total:.1f}", f"{max(r['peak_rss_mib'] for r in rows):.0f}")
    out = Console()
    out.print(table)
    if "evaluate" in stages:
        out.print((Layout.evaluation / "summary.md").read_text(), highlight=False)
    written = [
        Layout.evaluation / "summary.md",
        Layout.evaluation / "summary.json",
        Layout.evaluation / "score_by_turn.png",
        Layout.validation / "report.md",
    ]
    listed = ", ".join(str(x) for x in written if x.exists())
    out.print(f"reports: {report}{', ' + listed if listed else ''}, registry: {p.promote.registry}/", highlight=False)


def report_sources(root: Path, stats: Path = Layout.run_stats) -> Any:
    """Where the run report reads each part of a run rooted at `root` (the default layout)."""
    from editthinker.report import Sources

    return Sources(
        run_stats=root / stats,
        trajectories=root / Layout.trajectories,
        filtered=root / Layout.filtered,
        sft_data=root / Layout.sft_data,
        rl_data=root / Layout.rl_data,
        validation=root / Layout.validation,
        sft_model=root / Layout.sft_model,
        rl_model=root / Layout.rl_model,
        evaluation=root / Layout.evaluation,
    )


def _write_report(out: Path, root: Path, stats: Path, max_trajectories: int = 50, seed: int = 0) -> None:
    from editthinker.report import write_report

    summary = write_report(out, report_sources(root, stats), max_trajectories, seed, str(root.resolve()))
    console.print(f"[green]report done:[/green] {summary} -> {out}", highlight=False, soft_wrap=True)


@app.command("report")
def report_(
    out: Annotated[Path, _opt("the HTML file to write (one self-contained file)")] = Layout.report,
    root: Annotated[Path, _opt("the run folder whose outputs to read (data/, models/, reports/)")] = Path("."),
    trajectories: Annotated[
        int, typer.Option("--trajectories", "-n", min=0, help="trajectories in the browser (a seeded sample)")
    ] = 50,
    seed: Annotated[int, _opt("seed of the trajectory sample")] = 0,
) -> None:
    """Write the run report: stage timings, data funnel, score distributions, a trajectory browser, validation,
    training and evaluation; parts not run yet are shown as such."""
    _write_report(out, root, Layout.run_stats, trajectories, seed)


params_app = typer.Typer(add_completion=False, no_args_is_help=True, help="The params the stages would run with.")
app.add_typer(params_app, name="params")


@params_app.command("show")
def params_show(
    params: ParamsOpt = None,
    set_: SetOpt = None,
    section: Annotated[str | None, typer.Option("--section", help="only this section (sft, rl, thinker, ...)")] = None,
) -> None:
    """Print the merged, validated params as YAML (every key, defaults included); a file that loads back the same."""
    p = _params(params, set_)
    try:
        text = params_yaml(p, section)
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    typer.echo(text, nl=False)


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
    params: ParamsOpt = None,
    set_: SetOpt = None,
    max_turns: Annotated[int | None, typer.Option(help="default: params evaluate.max_turns")] = None,
    seed: Annotated[int, _opt("seed of the episode (a synthetic editor's slips, the expert's errors)")] = 0,
    reference: Annotated[Path | None, typer.Option(help="target scene JSON (synthetic expert / judge)")] = None,
) -> None:
    """Think-while-Edit on one image: every turn's image, the trace as JSON and an HTML strip."""
    from editthinker import single_edit

    p = _params(params, set_)
    ref = reference.read_text() if reference is not None else None
    result = _stage("edit", lambda: single_edit.run(p, image, instruction, editor, thinker, out, max_turns, seed, ref))
    console.print(f"{out}/index.html: {len(result['turns'])} turn(s), stopped: {result['stop_reason']}")


@app.command("serve-editor")
def serve_editor(
    editor: Annotated[str, typer.Option(help="an editor name from params.editors")],
    params: ParamsOpt = None,
    set_: SetOpt = None,
    host: Annotated[str, _opt("address to listen on (0.0.0.0: every interface)")] = "127.0.0.1",
    port: Annotated[int, _opt("port to listen on")] = 8700,
) -> None:
    """Serve one editor from params over HTTP (POST /edit, GET /health) for `kind: http` editors."""
    from editthinker.backends.factory import build_editor
    from editthinker.backends.http_editor import EditorServer, make_app

    p = _params(params, set_)
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
    images: Annotated[
        Path | None,
        typer.Option(
            help="the image store the samples refer to (default: <data>/images if there, else data/trajectories/images)"
        ),
    ] = None,
) -> None:
    """Step samples in a release trainer's format: LLaMA-Factory sharegpt (SFT) or EasyR1 jsonl (RL)."""
    from editthinker import release_formats as rf

    f = _release_format(fmt)
    steps = data or (Layout.rl_data if f == "easyr1" else Layout.sft_data)
    store = images or (steps / "images" if (steps / "images").is_dir() else Layout.images)

    def work() -> dict[str, Any]:
        return rf.export_steps(steps, out, f, _template_text(template), absolute_paths, images=store).to_dict()

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
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Run the Think-while-Edit loop on a benchmark; the edits land where its official scorer reads them."""
    from functools import partial

    from editthinker.benchmarks import runner, scoring

    p = _params(params, set_)
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
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Score runs with each benchmark's judge protocol; writes scores.json and judgements.jsonl into each."""
    from functools import partial

    from editthinker.benchmarks import scoring

    p = _params(params, set_)
    for folder in run:
        _print_scores(_stage("benchmark score", partial(scoring.score_run, p, folder, data or None)))


@benchmark_app.command("report")
def benchmark_report(
    runs: Annotated[list[Path], typer.Option(help="a folder of scored runs (repeat for several)")] = [BENCHMARK_RUNS],  # noqa: B006
    out: Annotated[Path, typer.Option(help="report folder: report.json, report.md, comparison.png")] = Path(
        "reports/benchmarks/report"
    ),
    max_turns: Annotated[int | None, typer.Option(help="turns of the main comparison; default params")] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Editor alone -> + thinker -> + expert on every benchmark, with 95% intervals, categories, turn ablation."""
    from editthinker.benchmarks.report import REPORT_MD, write_report

    p = _params(params, set_)
    _stage("benchmark report", lambda: write_report(runs, out, max_turns or p.benchmarks.max_turns))
    Console().print((out / REPORT_MD).read_text(), highlight=False)


if __name__ == "__main__":
    app()
