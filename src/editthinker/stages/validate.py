"""Validate stage: great-expectations suites over the trajectory dataset and the two step-sample datasets.

The suites are code, one function per dataset kind. Checks that great-expectations cannot express on its
own (an image decodes as a PNG of the configured size, a target text parses, overall = sqrt(SC * PQ)) are
computed here as extra columns of the validated frame, and the suite expects their values. Every
expectation runs with result_format COMPLETE and the dataset's id columns as the unexpected index columns,
so a failure names its rows by trajectory_id + turn (trajectories) or sample_id (step samples).

The report (report.json, report.md, lineage.json) is written whether or not validation passes; on a
failure the stage then raises `ValidationFailed`. Inputs are only read.

great-expectations takes seconds to import, so it is imported inside `run` and the suite builders only.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from editthinker.config import Params
from editthinker.lineage import LINEAGE_FILE, make_lineage
from editthinker.stages import sections_of
from editthinker.storage import atomic_dir, write_json

if TYPE_CHECKING:
    import pandas as pd

REPORT_FILE = "report.json"
REPORT_MD = "report.md"
MAX_ROWS_IN_REPORT = 1000  # row ids listed per failed expectation in report.json (the count is always exact)
MAX_ROWS_IN_MESSAGE = 10  # row ids named in the exception message, over all failures (at least one each)
MAX_ROWS_PER_FAILURE_IN_MESSAGE = 3
SCORE_TOLERANCE = 1e-6
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

DATASETS = ("trajectories", "sft", "rl")
ID_COLUMNS: dict[str, tuple[str, ...]] = {
    "trajectories": ("trajectory_id", "turn"),
    "sft": ("sample_id",),
    "rl": ("sample_id",),
}
# Computed columns: name -> what it checks (the suite expects each to be True).
TRAJECTORY_DERIVED = {
    "source_image_ok": "source_image is in the image store and decodes at its recorded size",
    "image_ok": "image is in the image store and decodes at its recorded size",
    "overall_error": "|overall - sqrt(semantic * quality)|",
}
STEP_DERIVED = {
    "source_image_ok": "source_image is in the image store and decodes at its recorded size",
    "previous_image_ok": "previous_image is in the image store and decodes at its recorded size",
    "target_text_ok": "target_text parses as a thinker answer",
}


_SCORES = ("semantic", "quality", "overall")


class ValidationFailed(RuntimeError):
    """Some dataset failed its suite; the report was written before this was raised."""


# --------------------------------------------------------------------------------------------- suites


def trajectory_suite(params: Params) -> Any:
    """Expectations for the trajectory dataset (records.TRAJECTORY_SCHEMA, one row per turn)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    from editthinker.records import TRAJECTORY_SCHEMA

    ex: list[Any] = [gxe.ExpectColumnToExist(column=c) for c in TRAJECTORY_SCHEMA.names]
    ex += _not_null(gxe, ["trajectory_id", "task_id", "turn", "original_instruction", "instruction", "task_type"])
    ex += _not_null(gxe, ["source_image", "image", "semantic", "quality", "overall"])
    ex += [
        gxe.ExpectColumnValuesToBeBetween(column="turn", min_value=1, description="turns count from 1"),
        *(gxe.ExpectColumnValuesToBeBetween(column=c, min_value=0, max_value=10) for c in _SCORES),
        gxe.ExpectColumnValuesToBeBetween(
            column="overall_error", min_value=0, max_value=SCORE_TOLERANCE, description="overall == sqrt(SC * PQ)"
        ),
        gxe.ExpectColumnValuesToBeInSet(column="editor", value_set=[e.name for e in params.editors]),
        _is_true(gxe, "source_image_ok", TRAJECTORY_DERIVED["source_image_ok"]),
        _is_true(gxe, "image_ok", TRAJECTORY_DERIVED["image_ok"]),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["trajectory_id", "turn"], description="one row per turn"),
    ]
    return gx.ExpectationSuite(name="trajectories", expectations=ex)


def step_sample_suite(params: Params, split: str) -> Any:
    """Expectations for one step-sample dataset (records.STEP_SAMPLE_SCHEMA) whose split is `split`."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    from editthinker.records import STEP_SAMPLE_SCHEMA

    ex: list[Any] = [gxe.ExpectColumnToExist(column=c) for c in STEP_SAMPLE_SCHEMA.names]
    ex += _not_null(gxe, ["sample_id", "trajectory_id", "task_id", "step", "original_instruction", "task_type"])
    ex += _not_null(gxe, ["previous_instruction", "target_answer", "target_text", "source_image", "previous_image"])
    ex += _not_null(gxe, ["target_semantic", "target_quality"])
    ex += [
        gxe.ExpectColumnValuesToBeBetween(column="step", min_value=2, description="step 1 has nothing to refine"),
        gxe.ExpectColumnValuesToBeBetween(column="target_semantic", min_value=0, max_value=10),
        gxe.ExpectColumnValuesToBeBetween(column="target_quality", min_value=0, max_value=10),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=[split]),
        gxe.ExpectColumnValuesToBeInSet(column="editor", value_set=[e.name for e in params.editors]),
        _is_true(gxe, "target_text_ok", "target_text parses with protocol.parse_thinker_answer"),
        _is_true(gxe, "source_image_ok", STEP_DERIVED["source_image_ok"]),
        _is_true(gxe, "previous_image_ok", STEP_DERIVED["previous_image_ok"]),
        gxe.ExpectColumnValuesToBeUnique(column="sample_id"),
    ]
    return gx.ExpectationSuite(name=split, expectations=ex)


def _not_null(gxe: Any, columns: Iterable[str]) -> list[Any]:
    return [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in columns]


def _is_true(gxe: Any, column: str, description: str) -> Any:
    return gxe.ExpectColumnValuesToBeInSet(column=column, value_set=[True], description=description)


# ------------------------------------------------------------------------------------ computed columns


class _ImageChecker:
    """Is a value the sha256 of an image in the store that decodes at the width and height the store records?
    Memoised on the hash: a trajectory's source image repeats in every turn and every step sample. Without a
    store (None: it could not be opened) every image fails."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._seen: dict[str, bool] = {}

    def __call__(self, sha: Any) -> bool:
        if not isinstance(sha, str) or self.store is None:
            return False
        ok = self._seen.get(sha)
        if ok is None:
            ok = self._seen[sha] = self._decode(sha)
        return ok

    def _decode(self, sha: str) -> bool:
        if sha not in self.store:
            return False
        record = self.store.record(sha)
        try:
            img = self.store.image(sha)
        except Exception:  # PIL raises many kinds for bad bytes: all mean the same here
            return False
        return img.size == (record["width"], record["height"])


def _bool_column(frame: pd.DataFrame, source: str, target: str, check: Callable[[Any], bool]) -> None:
    """frame[target] = check(value) for every value of frame[source]; absent source -> no target."""
    if source in frame.columns:
        frame[target] = [check(v) for v in frame[source].tolist()]
        frame[target] = frame[target].astype(bool)


def _text_ok(text: Any) -> bool:
    from editthinker.protocol import parse_thinker_answer

    return isinstance(text, str) and parse_thinker_answer(text).format_ok


def trajectory_frame(table: Any, images: _ImageChecker) -> pd.DataFrame:
    import numpy as np

    frame = table.to_pandas()
    _bool_column(frame, "source_image", "source_image_ok", images)
    _bool_column(frame, "image", "image_ok", images)
    if all(c in frame.columns for c in _SCORES):
        sem, qual, overall = (frame[c].astype(float).to_numpy() for c in _SCORES)
        with np.errstate(invalid="ignore"):
            frame["overall_error"] = np.abs(overall - np.sqrt(sem * qual))
    return frame


def step_frame(table: Any, images: _ImageChecker) -> pd.DataFrame:
    frame = table.to_pandas()
    _bool_column(frame, "source_image", "source_image_ok", images)
    _bool_column(frame, "previous_image", "previous_image_ok", images)
    _bool_column(frame, "target_text", "target_text_ok", _text_ok)
    return frame


# ----------------------------------------------------------------------------------------- the stage


def run(params: Params, trajectories: Path, sft: Path, rl: Path, report_dir: Path,
        images_dir: Path | None = None) -> dict:  # fmt: skip
    """Validate the three datasets, write `report_dir`, return the report; raise ValidationFailed on failure.
    Their images are looked up in the image store `images_dir` (default: the trajectories' own, `images/`),
    which must be the one every dataset names (a clear error otherwise)."""
    from editthinker.images import ImageStoreMismatch, open_store_for

    paths = {"trajectories": Path(trajectories), "sft": Path(sft), "rl": Path(rl)}
    images_dir = Path(trajectories) / "images" if images_dir is None else Path(images_dir)
    store = None
    for path in paths.values():
        try:
            store = open_store_for(path, images_dir)
        except ImageStoreMismatch:
            raise
        except Exception:  # noqa: S112 - an unreadable dataset is reported by its own validation below
            continue
    images = _ImageChecker(store)
    suites = {
        "trajectories": lambda: trajectory_suite(params),
        "sft": lambda: step_sample_suite(params, "sft"),
        "rl": lambda: step_sample_suite(params, "rl"),
    }
    context = _quiet_context()
    results: dict[str, dict[str, Any]] = {}
    for name in DATASETS:
        results[name] = _validate_one(context, name, paths[name], suites[name](), images)

    readable = {name: p for name, p in paths.items() if "error" not in results[name]}
    report = {
        "success": all(r["success"] for r in results.values()),
        "datasets": results,
        "image_store_sha256": store.dataset_sha256 if store is not None else None,
        # the hashes of the datasets read and verified (an unreadable one is reported above, with its error)
        "lineage": make_lineage("validate", params, sections_of("validate"), {**readable, "images": images_dir}, {}),
    }
    with atomic_dir(Path(report_dir)) as tmp:
        write_json(tmp / REPORT_FILE, report)
        write_json(tmp / LINEAGE_FILE, report["lineage"])
        (tmp / REPORT_MD).write_text(_markdown(report))
    if not report["success"]:
        raise ValidationFailed(_message(results, Path(report_dir) / REPORT_FILE))
    return report


def _quiet_context() -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return context


def _validate_one(context: Any, name: str, path: Path, suite: Any, images: _ImageChecker) -> dict[str, Any]:
    import great_expectations as gx
    import great_expectations.expectations as gxe

    from editthinker.records import read_manifest, read_table

    try:
        manifest = read_manifest(path)
        table = read_table(path)
    except Exception as exc:  # unreadable dataset: a failure of its own, still reported
        return {
            "path": str(path),
            "success": False,
            "rows": None,
            "error": f"{type(exc).__name__}: {exc}",
            "counts": {},
            "failures": [],
        }
    frame = trajectory_frame(table, images) if name == "trajectories" else step_frame(table, images)
    del table

    suite.add_expectation(gxe.ExpectTableRowCountToEqual(value=int(manifest["rows"]), description="manifest rows"))
    id_cols = [c for c in ID_COLUMNS[name] if c in frame.columns]
    result_format: dict[str, Any] = {"result_format": "COMPLETE", "return_unexpected_index_query": False}
    if id_cols:
        result_format["unexpected_index_column_names"] = id_cols

    source = context.data_sources.add_pandas(f"{name}_source")
    batch_def = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(f"{name}_all")
    suite = context.suites.add(suite)
    vdef = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch_def, suite=suite))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = vdef.run(batch_parameters={"dataframe": frame}, result_format=result_format)

    failures = [_failure(r, id_cols) for r in result.results if not r.success]
    failures.sort(key=lambda f: (f["expectation"], str(f["column"])))
    stats = result.statistics
    return {
        "dataset_sha256": manifest.get("dataset_sha256"),  # not the path: the report must not depend on where it ran
        "success": bool(result.success),
        "rows": len(frame),
        "id_columns": id_cols,
        "computed_columns": TRAJECTORY_DERIVED if name == "trajectories" else STEP_DERIVED,
        "counts": {
            "rows": len(frame),
            "expectations": int(stats["evaluated_expectations"]),
            "passed": int(stats["successful_expectations"]),
            "failed": int(stats["unsuccessful_expectations"]),
        },
        "failures": failures,
    }


def _failure(r: Any, id_cols: list[str]) -> dict[str, Any]:
    cfg = r.expectation_config
    kwargs = {k: _jsonable(v) for k, v in cfg.kwargs.items() if k != "batch_id"}
    column = kwargs.get("column", kwargs.get("column_list"))
    res = r.result or {}
    index_list = res.get("unexpected_index_list") or []
    if id_cols:
        rows = [{c: _jsonable(ix.get(c)) for c in id_cols} for ix in index_list]
    else:  # no id column survived: GE gives plain frame indices
        rows = [{"index": _jsonable(ix)} for ix in index_list]
    counts = res.get("partial_unexpected_counts") or []
    error = None
    info = r.exception_info or {}
    if info.get("raised_exception"):
        error = info.get("exception_message")
    else:  # GE keys exception_info by metric id when a metric failed
        for v in info.values():
            if isinstance(v, dict) and v.get("raised_exception"):
                error = v.get("exception_message")
                break
    return {
        "expectation": cfg.type,
        "column": column,
        "description": cfg.description,
        "kwargs": kwargs,
        "unexpected_count": res.get("unexpected_count", len(rows)),
        "observed_value": _jsonable(res.get("observed_value")),
        "unexpected_values": [{"value": _jsonable(c["value"]), "count": int(c["count"])} for c in counts[:20]],
        "rows": rows[:MAX_ROWS_IN_REPORT],
        "rows_truncated": len(rows) > MAX_ROWS_IN_REPORT,
        "error": error,
    }


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, bool | str | int):
        return v
    if isinstance(v, float):
        return None if math.isnan(v) else v
    if isinstance(v, bytes | bytearray):
        return f"<{len(v)} bytes>"
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple | set):
        return [_jsonable(x) for x in v]
    if hasattr(v, "item"):  # numpy scalar
        return _jsonable(v.item())
    return str(v)


def _row_label(row: dict[str, Any]) -> str:
    return "(" + ", ".join(f"{k}={v}" for k, v in row.items()) + ")"


def _failure_label(f: dict[str, Any]) -> str:
    col = f["column"]
    col = ",".join(col) if isinstance(col, list) else col
    return f"{f['expectation']}({col})" if col is not None else f["expectation"]


def _message(results: dict[str, dict[str, Any]], report_path: Path) -> str:
    lines = []
    budget = MAX_ROWS_IN_MESSAGE
    for name, res in results.items():
        if res["success"]:
            continue
        if res.get("error"):
            lines.append(f"{name}: unreadable: {res['error']}")
            continue
        for f in res["failures"]:
            shown = f["rows"][: max(1, min(budget, MAX_ROWS_PER_FAILURE_IN_MESSAGE))]  # each failure names a row
            budget -= len(shown)
            rows = ", ".join(_row_label(r) for r in shown)
            more = f["unexpected_count"] - len(shown) if isinstance(f["unexpected_count"], int) else 0
            detail = f"{f['unexpected_count']} row(s)" if f["rows"] else (f["error"] or f["observed_value"] or "")
            tail = f": {rows}" + (f" and {more} more" if more > 0 else "") if shown else ""
            lines.append(f"{name}: {_failure_label(f)} failed ({detail}){tail}")
    return f"validation failed (report: {report_path}):\n  " + "\n  ".join(lines)


def _markdown(report: dict[str, Any]) -> str:
    out = ["# Data validation", "", f"Overall: **{'PASS' if report['success'] else 'FAIL'}**", ""]
    out += ["| dataset | result | rows | expectations | failed |", "|---|---|---|---|---|"]
    for name, res in report["datasets"].items():
        c = res["counts"]
        verdict = "pass" if res["success"] else "FAIL"
        out.append(f"| {name} | {verdict} | {res['rows']} | {c.get('expectations', '-')} | {c.get('failed', '-')} |")
    for name, res in report["datasets"].items():
        if res["success"]:
            continue
        out += ["", f"## {name}", ""]
        if res.get("error"):
            out.append(f"- unreadable: {res['error']}")
        for f in res["failures"]:
            rows = ", ".join(_row_label(r) for r in f["rows"][:5])
            what = f"{f['unexpected_count']} row(s): {rows}" if f["rows"] else (f["error"] or f["observed_value"])
            out.append(f"- `{_failure_label(f)}`: {what}")
    return "\n".join(out) + "\n"
