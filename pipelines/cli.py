"""`editthinker pipeline`: compile, submit and schedule the Kubeflow pipelines (needs kfp; a cluster for the last two).

The pipelines are built from params.yaml: its `kubernetes` section (images, GPUs, cpu/memory, node selector,
tolerations, PVCs, secrets by name, timeouts, retries) and `generate.shards` at compile time; the rest of params
as run-time arguments, each step given only the sections its stage reads. Submit and schedule compile with the
same params they pass, so the two cannot disagree; the run name carries the params hash
(`Params.section_hash()`, first 12 hex digits).

An authenticated KFP endpoint gets a bearer token from the environment (`--token-env`, default KFP_TOKEN, used
when set) or from a file read on every request (`--token-file`, e.g. a projected service-account token); never
from params or the command line, and it is never printed or compiled into a package.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from editthinker.config import ConfigError, Params, load_params
from pipelines.factory import compile_all, compile_pipeline, pipeline_arguments

app = typer.Typer(add_completion=False, no_args_is_help=True, help=(__doc__ or "").split("\n\n")[0])
console = Console(stderr=True)


class Which(StrEnum):
    factory = "factory"
    data = "data"
    train = "train"


ParamsOpt = Annotated[
    list[Path] | None,
    typer.Option("--params", "-p", help="params file to compile and run with; repeat to layer a recipe [params.yaml]"),
]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE over the params files, later wins")]
HostOpt = Annotated[str, typer.Option("--host", help="KFP API endpoint, e.g. http://localhost:8080")]
ExperimentOpt = Annotated[str, typer.Option("--experiment", help="KFP experiment (created if missing)")]
PipelineOpt = Annotated[Which, typer.Option("--pipeline", help="which pipeline")]
NamespaceOpt = Annotated[str | None, typer.Option("--namespace", help="KFP namespace (multi-user installs)")]
RegistryOpt = Annotated[
    str | None, typer.Option("--registry", help="registry path in the pods (default: the registry PVC or params)")
]
SftOpt = Annotated[str | None, typer.Option("--sft-data", help="train only: URI of SFT step samples")]
RlOpt = Annotated[str | None, typer.Option("--rl-data", help="train only: URI of RL step samples")]
TrajOpt = Annotated[
    str | None, typer.Option("--trajectories", help="train only: URI of the trajectories (their image store)")
]
TasksOpt = Annotated[
    str | None,
    typer.Option("--tasks", help="data/factory: URI of prepared tasks (`editthinker prepare`) for generate"),
]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="run every step again (default: per-step caching)")]
DEFAULT_TOKEN_ENV = "KFP_TOKEN"
TokenEnvOpt = Annotated[
    str | None,
    typer.Option(
        "--token-env",
        help=f"environment variable holding a bearer token for the KFP API (default {DEFAULT_TOKEN_ENV}, if set)",
    ),
]
TokenFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--token-file", help="file holding the token, read on every request (e.g. a projected service-account token)"
    ),
]


@dataclass(frozen=True)
class Auth:
    """How the client authenticates: a token (from the environment) or a token file; neither: anonymous."""

    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    source: str = "none"  # where it came from, for messages (never the token)


def auth_from(token_env: str | None, token_file: Path | None) -> Auth:
    """The token file if given, else the token in `token_env` (default KFP_TOKEN, optional then)."""
    if token_file is not None:
        if token_env is not None:
            raise typer.BadParameter("give --token-env or --token-file, not both")
        if not token_file.is_file():
            raise typer.BadParameter(f"{token_file}: no such file", param_hint="--token-file")
        return Auth(token_file=token_file, source=f"file {token_file}")
    var = token_env or DEFAULT_TOKEN_ENV
    token = os.environ.get(var, "")
    if not token and token_env is not None:
        raise typer.BadParameter(f"the environment variable {var} is not set", param_hint="--token-env")
    return Auth(token=token, source=f"${var}") if token else Auth()


def client_factory(host: str, namespace: str | None, auth: Auth) -> Any:
    """The KFP client, authenticated by `auth`; tests replace this function with a fake."""
    import kfp
    from kfp.client import ServiceAccountTokenVolumeCredentials

    kwargs: dict[str, Any] = {"host": host}
    if namespace is not None:
        kwargs["namespace"] = namespace
    if auth.token_file is not None:
        kwargs["credentials"] = ServiceAccountTokenVolumeCredentials(path=str(auth.token_file))
    elif auth.token:
        kwargs["existing_token"] = auth.token
    return kfp.Client(**kwargs)


def _client(host: str, namespace: str | None, auth: Auth) -> Any:
    if auth.token or auth.token_file:
        console.print(f"authenticating to {host} with the token from {auth.source}", highlight=False)
    return client_factory(host, namespace, auth)


def _params(paths: list[Path] | None, sets: list[str] | None) -> Params:
    try:
        return load_params(*(paths or [Path("params.yaml")]), overrides=sets or [])
    except ConfigError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


def run_name(params: Params, pipeline: str) -> str:
    return f"editthinker-{pipeline}-{params.section_hash()[:12]}"


def _arguments(
    params: Params, pipeline: Which, registry: str | None, sft: str | None, rl: str | None,
    trajectories: str | None = None, tasks: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    named = (("sft_data_uri", sft), ("rl_data_uri", rl), ("trajectories_uri", trajectories))
    uris = {k: v for k, v in named if v}
    if pipeline != Which.data and registry is None and not params.kubernetes.registry.pvc:
        console.print(
            "[yellow]warning:[/yellow] no registry PVC (kubernetes.registry.pvc) and no --registry: the registry "
            "would live in the pods' own file system and vanish with them",
            highlight=False,
        )
    api = [r for r, c in (("expert", params.expert), ("judge", params.judge)) if c.kind == "openai" and c.cache_dir]
    if api and not params.kubernetes.model_cache.pvc:
        console.print(
            f"[yellow]warning:[/yellow] no model cache PVC (kubernetes.model_cache.pvc): the {' and '.join(api)} "
            "answer cache would live in the pods' own file system and vanish with them",
            highlight=False,
        )
    try:
        return pipeline_arguments(params, pipeline.value, registry, uris, tasks)
    except ValueError as exc:
        raise typer.BadParameter(f"{exc} (--sft-data, --rl-data, --trajectories, --tasks)") from None


def cron6(cron: str) -> str:
    """KFP wants 6 cron fields (seconds first); a 5-field crontab line gets second 0."""
    fields = cron.split()
    if len(fields) == 5:
        fields.insert(0, "0")
    if len(fields) != 6:
        raise typer.BadParameter(f"{cron!r}: a cron expression has 5 (crontab) or 6 (with seconds) fields")
    return " ".join(fields)


@app.command("compile")
def compile_(
    params: ParamsOpt = None,
    set_: SetOpt = None,
    out: Annotated[Path, typer.Option("--out", help="output folder")] = Path("build/pipelines"),
    prepared_tasks: Annotated[
        bool, typer.Option("--prepared-tasks", help="data/factory take `tasks_uri`: prepared tasks for generate")
    ] = False,
) -> None:
    """Compile the data, train and factory pipelines to KFP YAML with params' platform settings."""
    p = _params(params, set_)
    for name, path in compile_all(out, p, prepared_tasks).items():
        typer.echo(f"{name}\t{path}")
    names = " + ".join(str(x) for x in params or [Path("params.yaml")]) + (" + --set" if set_ else "")
    console.print(f"compiled with {names} (params sha256 {p.section_hash()[:12]})", highlight=False)


@app.command()
def submit(
    host: HostOpt,
    experiment: ExperimentOpt = "editthinker",
    pipeline: PipelineOpt = Which.factory,
    params: ParamsOpt = None,
    set_: SetOpt = None,
    registry: RegistryOpt = None,
    sft_data: SftOpt = None,
    rl_data: RlOpt = None,
    trajectories: TrajOpt = None,
    tasks: TasksOpt = None,
    namespace: NamespaceOpt = None,
    no_cache: NoCacheOpt = False,
    token_env: TokenEnvOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Compile one pipeline with params and start a run of it on a KFP backend."""
    auth = auth_from(token_env, token_file)
    p = _params(params, set_)
    args = _arguments(p, pipeline, registry, sft_data, rl_data, trajectories, tasks)
    name = run_name(p, pipeline.value)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(Path(tmp) / f"editthinker-{pipeline.value}.yaml", pipeline.value, p, bool(tasks))
        client = _client(host, namespace, auth)
        result = client.create_run_from_pipeline_package(
            pipeline_file=str(package),
            arguments=args,
            run_name=name,
            experiment_name=experiment,
            namespace=namespace,
            enable_caching=False if no_cache else None,  # None: each task's own caching option
        )
    typer.echo(f"{name}\t{getattr(result, 'run_id', result)}")


@app.command()
def schedule(
    host: HostOpt,
    cron: Annotated[str, typer.Option("--cron", help='e.g. "0 3 * * *" (crontab) or 6 fields with seconds')],
    experiment: ExperimentOpt = "editthinker",
    pipeline: PipelineOpt = Which.factory,
    params: ParamsOpt = None,
    set_: SetOpt = None,
    registry: RegistryOpt = None,
    sft_data: SftOpt = None,
    rl_data: RlOpt = None,
    trajectories: TrajOpt = None,
    tasks: TasksOpt = None,
    namespace: NamespaceOpt = None,
    no_cache: NoCacheOpt = False,
    token_env: TokenEnvOpt = None,
    token_file: TokenFileOpt = None,
) -> None:
    """Create a recurring run (one at a time, no catch-up) of one pipeline on a KFP backend.

    Steps are cached: a scheduled run whose params and inputs did not change reuses every cached output
    (challenge and promote still run). Use --no-cache to recompute everything each time.
    """
    auth = auth_from(token_env, token_file)
    p = _params(params, set_)
    args = _arguments(p, pipeline, registry, sft_data, rl_data, trajectories, tasks)
    expression = cron6(cron)
    name = run_name(p, pipeline.value)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(Path(tmp) / f"editthinker-{pipeline.value}.yaml", pipeline.value, p, bool(tasks))
        client = _client(host, namespace, auth)
        exp = client.create_experiment(name=experiment, namespace=namespace)
        job = client.create_recurring_run(
            experiment_id=exp.experiment_id,
            job_name=name,
            cron_expression=expression,
            max_concurrency=1,
            no_catchup=True,
            params=args,
            pipeline_package_path=str(package),
            enable_caching=False if no_cache else None,
        )
    typer.echo(f"{name}\t{expression}\t{getattr(job, 'recurring_run_id', job)}")
