"""What a registered version says about itself: the params values and the git commit it is traced to, and its model
card (README.md in the Hugging Face style).

The card is rendered once, when the version is registered, from three things promote already holds: the
checkpoint's lineage.json (stage, params, code version, input hashes and sizes, model ids), the `registered`
record (metrics, params of every stage in its lineage, git commit) and the eval summary (the table). It names
the checkpoint by content hash, never by registry version, so the same card text is valid in any registry and
content-addressed on S3. Its YAML front matter is what the Hub reads (library_name, pipeline_tag, tags, and
base_model when the thinker started from a hub model); the body says where the model came from and how to load it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from editthinker.config import Params
from editthinker.lineage import PACKAGE_ROOT

CARD_FILE = "README.md"
TAGS = ("editthinker", "think-while-edit", "image-editing", "thinker")
PIPELINE_TAG = "image-text-to-text"
LIBRARY = "transformers"
# metrics in the order the eval table shows them (others follow, sorted)
METRIC_ORDER = ("success_rate", "semantic", "quality", "overall", "turns", "format_failures", "n")


# --- the git commit ------------------------------------------------------------------------------------------
def _git(where: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=30, check=True)
    return done.stdout


def git_state(where: Path | None = None) -> dict[str, Any] | None:
    """{"commit": HEAD, "dirty": tracked files changed} of the git work tree that holds the running package's
    source (`where`, default the package folder), or None when there is none: no git binary, not a work tree,
    no commit yet, or a package installed outside the tree (its __init__.py not tracked there). Never raises."""
    where = Path(where) if where is not None else PACKAGE_ROOT
    try:
        _git(where, "ls-files", "--error-unmatch", "--", "__init__.py")
        commit = _git(where, "rev-parse", "--verify", "HEAD").strip()
        dirty = bool(_git(where, "status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


# --- params values -------------------------------------------------------------------------------------------
def _values_hash(values: dict[str, Any]) -> str:
    """The hash Params.section_hash gives the same sections: sha256 of their values as sorted JSON."""
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def stage_params(lineage: dict[str, Any], params: Params | None = None) -> dict[str, Any]:
    """The params record of one lineage: its sections, their hash, and their values when they are known for sure.

    The values come from the lineage's "params" when they hash to its params_sha256; for an older lineage
    without them, from `params` when its same sections have that very hash (then they are the same values).
    Otherwise "values" is None and "source" says why."""
    sections = [str(s) for s in lineage.get("params_sections", [])]
    sha = lineage.get("params_sha256")
    out: dict[str, Any] = {"sections": sections, "sha256": sha, "values": None, "source": None}
    recorded = lineage.get("params")
    if isinstance(recorded, dict) and _values_hash(recorded) == sha:
        return {**out, "values": recorded, "source": "lineage"}
    if params is not None and sections and params.section_hash(*sections) == sha:
        dump = params.model_dump(mode="json")
        return {**out, "values": {s: dump[s] for s in sections}, "source": "params (same sha256)"}
    why = "lineage values do not match its params_sha256" if isinstance(recorded, dict) else "not in the lineage"
    return {**out, "source": f"unknown: {why}, and the params given have another sha256"}


def params_record(params: Params | None, *lineages: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{stage: stage_params(lineage)} for each lineage that names its stage (a checkpoint's, an eval summary's)."""
    return {str(lin["stage"]): stage_params(lin, params) for lin in lineages if lin.get("stage")}


def flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    """{"section.key.sub": leaf} of nested dicts (lists stay whole leaves)."""
    if not isinstance(values, dict):
        return {prefix: values}
    out: dict[str, Any] = {}
    for k, v in values.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def base_model_of(params: dict[str, dict[str, Any]]) -> str | None:
    """The hub model the thinker started from, if its params name one (thinker.base_model); None for a thinker
    built from its config (tiny-qwen2.5-vl), which has no hub base model to point at."""
    for record in params.values():
        thinker = (record.get("values") or {}).get("thinker") or {}
        base = thinker.get("base_model")
        if isinstance(base, str) and base:
            return base
    return None


# --- the card ------------------------------------------------------------------------------------------------
def _size(size: dict[str, Any] | None) -> str:
    if not size:
        return "-"
    parts = []
    if "rows" in size:
        parts.append(f"{size['rows']:,} rows")
    if "files" in size:
        parts.append(f"{size['files']:,} file" + ("" if size["files"] == 1 else "s"))
    if "bytes" in size:
        parts.append(f"{size['bytes']:,} bytes")
    return ", ".join(parts)


def _number(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return str(v)
    return f"{v:d}" if isinstance(v, int) else f"{v:.4g}"


def eval_rows(summary: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(system, editor, metrics) rows of an eval summary's "systems": per editor when the summary has them
    ({system: {editor: metrics}}), else one "all" row per system ({system: metrics})."""
    rows: list[tuple[str, str, dict[str, Any]]] = []
    for system, value in (summary.get("systems") or {}).items():
        if not isinstance(value, dict):
            continue
        if value and all(isinstance(v, dict) for v in value.values()):
            rows += [(str(system), str(editor), m) for editor, m in value.items()]
        else:
            rows.append((str(system), "all", value))
    return rows


def eval_table(summary: dict[str, Any]) -> str:
    """The eval summary as a markdown table: system, editor, then each scalar metric."""
    rows = eval_rows(summary)
    found = {k for _, _, m in rows for k, v in m.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    if not rows or not found:
        return "_The eval summary has no per-system metrics._\n"
    cols = [k for k in METRIC_ORDER if k in found] + sorted(found - set(METRIC_ORDER))
    lines = ["| system | editor | " + " | ".join(c.replace("_", " ") for c in cols) + " |"]
    lines.append("|---|---|" + "---|" * len(cols))
    for system, editor, m in rows:
        lines.append(f"| {system} | {editor} | " + " | ".join(_number(m[c]) if c in m else "-" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def _front_matter(base_model: str | None, stage: str | None) -> str:
    meta: dict[str, Any] = {"library_name": LIBRARY, "pipeline_tag": PIPELINE_TAG}
    if base_model:
        meta["base_model"] = base_model
    meta["tags"] = [*TAGS, *([stage] if stage else [])]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n"


def _git_line(git: dict[str, Any] | None) -> str:
    if not git:
        return "not recorded (the registering code did not run from a git work tree)"
    return f"`{git['commit']}`" + (" with uncommitted changes" if git.get("dirty") else " (clean)")


def render_card(lineage: dict[str, Any], registered: dict[str, Any], summary: dict[str, Any]) -> str:
    """README.md for a registered checkpoint (see the module docstring)."""
    stage = lineage.get("stage")
    params: dict[str, dict[str, Any]] = registered.get("params") or {}
    base = base_model_of(params)
    sha = registered.get("checkpoint_sha256", "")
    model_id = (lineage.get("models") or {}).get("thinker") or f"checkpoint {sha[:12]}"
    metrics = registered.get("metrics") or {}
    out = [_front_matter(base, stage)]
    out.append(f"# EditThinker thinker `{model_id}`\n")
    out.append(
        "A *thinker* for Think-while-Edit: a vision-language model that looks at the source image and the "
        "latest edit, critiques the edit, and rewrites the instruction for the image editor's next turn. "
        f"Trained by the EditThinker factory (stage `{stage or 'unknown'}`) and registered with its lineage.\n"
    )
    if metrics:
        shown = ", ".join(f"{k} {_number(v)}" for k, v in sorted(metrics.items()))
        out.append(f"Held-out benchmark (editor + this thinker): {shown}.\n")

    out.append("## Lineage\n")
    out.append("| | |\n|---|---|")
    out.append(f"| checkpoint sha256 | `{sha}` |")
    base_text = f"`{base}`" if base else "none on the hub: the thinker is built from `params.thinker`"
    out.append(f"| base model | {base_text} |")
    out.append(f"| trained by stage | `{stage or 'unknown'}` |")
    out.append(f"| training code version | `{lineage.get('code_version', 'unknown')}` |")
    out.append(f"| registered by code version | `{registered.get('registered_by', 'unknown')}` |")
    out.append(f"| git commit at registration | {_git_line(registered.get('git'))} |")
    matches = registered.get("training_code_matches")
    if matches is not None:
        verdict = "yes" if matches else "no: the stage's code changed since training"
        out.append(f"| that commit's {stage} code is the training code | {verdict} |")
    out.append(f"| eval summary sha256 | `{registered.get('eval_summary_sha256', '')}` |")
    benchmark = registered.get("benchmark_sha256", "")
    out.append(f"| benchmark sha256 (world, editors, judge, evaluate params) | `{benchmark}` |")
    out.append("")
    inputs = lineage.get("inputs") or {}
    sizes = lineage.get("input_sizes") or {}
    if inputs:
        out.append("### Data and inputs\n")
        out.append("| input | sha256 | size |\n|---|---|---|")
        out += [f"| {name} | `{h}` | {_size(sizes.get(name))} |" for name, h in sorted(inputs.items())]
        out.append("")
    ev_lineage = summary.get("lineage") or {}
    if ev_lineage.get("inputs"):
        out.append("### Evaluated checkpoints\n")
        out.append("| input | sha256 |\n|---|---|")
        out += [f"| {name} | `{h}` |" for name, h in sorted(ev_lineage["inputs"].items())]
        out.append("")
    models = {**(lineage.get("models") or {}), **(ev_lineage.get("models") or {})}
    if models:
        out.append("### Models involved\n")
        out.append("| role | model id |\n|---|---|")
        out += [f"| {role} | `{mid}` |" for role, mid in sorted(models.items())]
        out.append("")

    out.append("## Params\n")
    if not params:
        out.append("_No params recorded._\n")
    for name, record in params.items():
        sections = ", ".join(record.get("sections") or [])
        out.append(f"### `{name}` stage: {sections} (sha256 `{record.get('sha256')}`)\n")
        if record.get("values") is None:
            out.append(f"_Values {record.get('source') or 'unknown'}._\n")
        else:
            out.append("```yaml\n" + yaml.safe_dump(record["values"], sort_keys=True) + "```\n")

    out.append("## Evaluation\n")
    evaluate = ((params.get("evaluate") or {}).get("values") or {}).get("evaluate") or {}
    if evaluate:
        out.append(
            f"Held-out synthetic benchmark: {evaluate.get('num_tasks', '?')} tasks, world seed "
            f"{evaluate.get('seed', '?')}, at most {evaluate.get('max_turns', '?')} turns.\n"
        )
    out.append(eval_table(summary))

    out.append("## How to load\n")
    out.append(
        "The folder is a standard transformers image-text-to-text checkpoint (safetensors, no remote code). "
        "Import `editthinker.models.vlm` first: it registers the thinker's processor class with `AutoProcessor`.\n"
    )
    out.append(
        "```python\n"
        "import editthinker.models.vlm  # registers the processor class\n"
        "from transformers import AutoModelForImageTextToText, AutoProcessor\n\n"
        'model = AutoModelForImageTextToText.from_pretrained("<this repo or folder>")\n'
        'processor = AutoProcessor.from_pretrained("<this repo or folder>")\n'
        "```\n"
    )
    out.append("As a thinker in the Think-while-Edit loop (`editthinker edit --thinker <folder>` does the same):\n")
    out.append(
        "```python\n"
        "from editthinker.backends.vlm_thinker import VLMThinker\n\n"
        'thinker = VLMThinker("<this repo or folder>")\n'
        "```\n"
    )
    return "\n".join(out)


def card_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
