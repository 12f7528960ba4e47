"""Step samples to and from the training-data formats of the EditThinker release.

- `llamafactory` (SFT, the release's LLaMA-Factory fork): `sft_train.json`, a JSON array of sharegpt records
  `{"messages": [user, assistant], "images": [source, edited]}`, beside a `dataset_info.json` entry that maps
  them. The user turn is a release prompt template filled in (two `<image>` tokens, then the original and the
  previous instruction in quoted slots); the assistant turn is the think / score / answer blocks.
- `easyr1` (RL, the release's EasyR1 fork): `rl_train.jsonl`, one object a line with `origin_prompt`,
  `rewritten_prompt`, `origin_image_path`, `edited_image_path` and `evaluation: {semantics, quality}` (the
  judge's scores of the edited image; note the plural key), the same keys and types on every line.

Images are files under `images/`, named by the sha256 of their bytes (a source image shared by the steps of
a trajectory is written once); paths in the records are relative to the export folder, which is the
release's `media_dir` / `data.image_dir`. A record the release's loaders would reject, or one that would not
read back as written, is not exported: the export report names it and says why.

Export reads the pixels from the image store the step samples refer to (given explicitly, checked against the
one their manifest names). Import reads either format back into a step-sample dataset (manifest, lineage) that
the sft and rl stages read, with its images in an image store of its own, `<out>/images`. Fields the format
does not hold get the defaults in `import_defaults`, and the report lists them.
Export then import keeps everything both hold: the two instructions, both images (byte for byte when they
are PNG), the judge's scores, and for llamafactory the reason, the answer and the answer text.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from editthinker.images import (
    ImageStore,
    image_record,
    image_ref_of,
    open_store_for,
    sha256_bytes,
    store_ref,
    write_image_store,
)
from editthinker.lineage import code_version, hash_path
from editthinker.protocol import (
    IMAGE_TOKEN,
    RELEASE_PROMPT_TEMPLATE,
    check_release_template,
    fill_release_prompt,
    format_release_answer,
    format_thinker_answer,
    parse_thinker_answer,
    parse_thinker_answer_lenient,
    read_release_prompt,
)
from editthinker.records import STEP_SAMPLE_SCHEMA, iter_rows, read_manifest, write_dataset
from editthinker.storage import atomic_dir, write_json

Format = Literal["llamafactory", "easyr1"]
FORMATS: tuple[Format, ...] = ("llamafactory", "easyr1")
SFT_FILE = "sft_train.json"
RL_FILE = "rl_train.jsonl"
DATASET_INFO = "dataset_info.json"
DATASET_NAME = "edit_thinker_qwen3vl_sft"  # the release's dataset name in LLaMA-Factory's registry
IMAGES_DIR = "images"
REPORT_FILE = "export_report.json"
ROWS_PER_SHARD = 4096
RL_KEYS = ("origin_prompt", "rewritten_prompt", "origin_image_path", "edited_image_path", "evaluation")


@dataclass
class Problem:
    record: str  # a sample id (export) or a record's index in the file (import)
    reasons: list[str]


@dataclass
class Report:
    format: str
    written: int = 0
    skipped: list[Problem] = field(default_factory=list)
    defaults: dict[str, Any] = field(default_factory=dict)  # import: the fields the format does not hold
    lenient: int = 0  # import llamafactory: answers read only by the lenient parser
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- images: the one place that knows where a step sample keeps its images ---------------------------------
def step_images(row: dict[str, Any], store: ImageStore) -> tuple[bytes, bytes]:
    """(I_src, I_edit^{t-1}) of a step sample, as encoded image bytes from the image store its hashes are in."""
    return store.bytes_of(row["source_image"]), store.bytes_of(row["previous_image"])


def image_columns(source: bytes, previous: bytes) -> dict[str, str]:
    """The step-sample columns that refer to (I_src, I_edit^{t-1}): their sha256s."""
    return {"source_image": sha256_bytes(source), "previous_image": sha256_bytes(previous)}


def _png_bytes(path: Path) -> bytes:
    """An image file as PNG bytes: a PNG as it is, anything else PIL reads re-encoded (RGB) as PNG."""
    data = path.read_bytes()
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return data
    with Image.open(io.BytesIO(data)) as im:
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def _write_image(folder: Path, data: bytes) -> str:
    """Write the image once under its sha256; its path relative to the export folder."""
    name = f"{hashlib.sha256(data).hexdigest()}.png"
    path = folder / IMAGES_DIR / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return f"{IMAGES_DIR}/{name}"


# -- the release loaders' rules --------------------------------------------------------------------------
def sharegpt_problems(record: Any) -> list[str]:
    """Why LLaMA-Factory would skip or fail on a sharegpt record ([] when it would load it): messages an even,
    non-empty list of string turns alternating user / assistant from the user, images a list of path strings,
    as many as the `<image>` tokens in all turns."""
    if not isinstance(record, dict):
        return ["not a JSON object"]
    messages, images = record.get("messages"), record.get("images")
    if not isinstance(messages, list) or not messages:
        return ["messages is not a non-empty list"]
    problems = []
    if len(messages) % 2:
        problems.append(f"odd message count {len(messages)}")
    tokens = 0
    for i, m in enumerate(messages):
        want = "user" if i % 2 == 0 else "assistant"
        if not isinstance(m, dict) or m.get("role") != want:
            got = m.get("role") if isinstance(m, dict) else type(m).__name__
            problems.append(f"message {i} is {got!r}, not {want!r}: roles must alternate user, assistant")
        elif not isinstance(m.get("content"), str):
            problems.append(f"message {i} content is not a string")
        else:
            tokens += m["content"].count(IMAGE_TOKEN)
    if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
        problems.append("images is not a list of path strings")
    elif tokens != len(images):
        problems.append(f"{tokens} {IMAGE_TOKEN} tokens but {len(images)} images")
    return problems


def easyr1_problems(record: Any) -> list[str]:
    """Why the release's RL loader and reward could not use a jsonl record ([] when they can)."""
    if not isinstance(record, dict):
        return ["not a JSON object"]
    problems = [f"{k} is missing" for k in RL_KEYS if k not in record]
    problems += [
        f"{k} is not a non-empty string"
        for k in RL_KEYS[:4]
        if k in record and (not isinstance(record[k], str) or not record[k])
    ]
    ev = record.get("evaluation")
    if "evaluation" in record:
        if not isinstance(ev, dict):
            problems.append("evaluation is not an object")
        else:
            for k in ("semantics", "quality"):
                v = ev.get(k)
                if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                    problems.append(f"evaluation.{k} is missing or not a finite number")
    return problems


# -- export ----------------------------------------------------------------------------------------------
def sharegpt_record(row: dict[str, Any], template: str, paths: tuple[str, str]) -> dict[str, Any]:
    """One step sample as a LLaMA-Factory sharegpt record (one user and one assistant turn, two images)."""
    user = fill_release_prompt(template, row["original_instruction"], row["previous_instruction"])
    answer = format_release_answer(
        row["target_reason"], row["target_semantic"], row["target_quality"], row["target_answer"]
    )
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
        "images": list(paths),
    }


def easyr1_record(row: dict[str, Any], paths: tuple[str, str]) -> dict[str, Any]:
    """One step sample as an EasyR1 jsonl record; scores always floats, so every line has one schema."""
    return {
        "origin_prompt": row["original_instruction"],
        "rewritten_prompt": row["previous_instruction"],
        "origin_image_path": paths[0],
        "edited_image_path": paths[1],
        "evaluation": {"semantics": float(row["target_semantic"]), "quality": float(row["target_quality"])},
    }


def _read_back_problems(record: dict[str, Any], row: dict[str, Any], template: str) -> list[str]:
    """Would this record import as the step sample it came from? (A reason holding `</think>`, an instruction
    holding the template's own text, an empty answer ... would not.) Surrounding whitespace of the reason and
    runs of whitespace in the answer are not kept by the format, and scores are kept to two places."""
    problems, fields, _ = sharegpt_fields(record, template)
    if problems:
        return [f"it would not import: {'; '.join(problems)}"]
    want = {
        "original_instruction": row["original_instruction"],
        "previous_instruction": row["previous_instruction"],
        "target_reason": row["target_reason"].strip(),
        "target_semantic": round(float(row["target_semantic"]), 2),
        "target_quality": round(float(row["target_quality"]), 2),
        "target_answer": " ".join(row["target_answer"].split()),
    }
    differ = sorted(k for k, v in want.items() if fields[k] != v)
    return [f"it would import with other {', '.join(differ)}"] if differ else []


def export_steps(
    data: Path,
    out: Path,
    fmt: Format,
    template: str | None = None,
    absolute_paths: bool = False,
    dataset_name: str = DATASET_NAME,
    images: Path | None = None,
) -> Report:
    """Write the step samples in `data` to `out` in a release format (see the module doc); return the report,
    which is also written to `out/export_report.json`. `images`: the image store the samples refer to (checked
    against the one their manifest names; None: the store their manifest's `path` names beside the dataset);
    `template`: the release prompt template text (None: the built-in one); `absolute_paths`: image paths as
    absolute paths of their final place."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {list(FORMATS)}")
    if images is None:  # an imported dataset keeps its store inside it
        images = Path(data) / str(image_ref_of(Path(data)).get("path") or IMAGES_DIR)
    store = open_store_for(Path(data), images)
    template = RELEASE_PROMPT_TEMPLATE if template is None else template
    check_release_template(template)
    out = Path(out)
    report = Report(format=fmt)
    records: list[dict[str, Any]] = []
    with atomic_dir(out) as tmp:
        for row in iter_rows(Path(data)):
            problems, record = _export_one(row, fmt, template, tmp, store)
            if problems:
                report.skipped.append(Problem(str(row["sample_id"]), problems))
                continue
            if absolute_paths:
                _absolute(record, fmt, out.resolve())
            records.append(record)
        report.written = len(records)
        if fmt == "llamafactory":
            (tmp / SFT_FILE).write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
            write_json(tmp / DATASET_INFO, {dataset_name: dataset_info_entry(SFT_FILE)})
            report.files = [SFT_FILE, DATASET_INFO]
        else:
            lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
            (tmp / RL_FILE).write_text(lines, encoding="utf-8")
            report.files = [RL_FILE]
        report.files += [IMAGES_DIR, REPORT_FILE]
        write_json(tmp / REPORT_FILE, {**report.to_dict(), "source_dataset_sha256": _dataset_sha(Path(data))})
    return report


def _export_one(row: dict[str, Any], fmt: Format, template: str, folder: Path,
                store: ImageStore) -> tuple[list[str], dict[str, Any]]:  # fmt: skip
    source, previous = step_images(row, store)
    if not source or not previous:
        return ["an image is missing"], {}
    placeholder = ("source", "previous")  # check the record before writing its images
    if fmt == "llamafactory":
        record = sharegpt_record(row, template, placeholder)
        problems = sharegpt_problems(record) or _read_back_problems(record, row, template)
    else:
        record = easyr1_record(row, placeholder)
        problems = easyr1_fields(record)[0]
    if problems:
        return problems, {}
    paths = (_write_image(folder, source), _write_image(folder, previous))
    if fmt == "llamafactory":
        record["images"] = list(paths)
    else:
        record["origin_image_path"], record["edited_image_path"] = paths
    return [], record


def _absolute(record: dict[str, Any], fmt: Format, root: Path) -> None:
    if fmt == "llamafactory":
        record["images"] = [str(root / p) for p in record["images"]]
    else:
        for k in ("origin_image_path", "edited_image_path"):
            record[k] = str(root / record[k])


def dataset_info_entry(file_name: str) -> dict[str, Any]:
    """LLaMA-Factory's registry entry for a sharegpt file with `messages` and `images` columns."""
    return {
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": {"messages": "messages", "images": "images"},
        "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"},
    }


def _dataset_sha(data: Path) -> str:
    return str(read_manifest(data)["dataset_sha256"])


# -- import ----------------------------------------------------------------------------------------------
def import_defaults(fmt: Format, editor: str, split: str) -> dict[str, Any]:
    """The values imported step samples get for the fields `fmt` does not hold (ids: `<format>-<record index>`)."""
    d: dict[str, Any] = {
        "sample_id": f"{fmt}-<record index>",
        "trajectory_id": "= sample_id (the formats hold no trajectories)",
        "task_id": "= sample_id",
        "source": f"import-{fmt}",
        "task_type": "",
        "editor": editor,
        "seed": 0,
        "step": 2,
        "reference": None,
        "metadata": "{}",
        "trajectory_score_var": 0.0,
        "split": split,
    }
    if fmt == "easyr1":  # the RL format holds no answer
        d.update({"target_reason": "", "target_answer": "", "target_text": ""})
    return d


def sharegpt_fields(record: Any, template: str) -> tuple[list[str], dict[str, Any], bool]:
    """(problems, the step-sample fields a sharegpt record holds, whether its answer needed the lenient parser).

    The answer is parsed strictly, or failing that as the release's reward parser reads it; scores must be in
    0-10 and the answer non-empty. `images` holds the record's two image paths, as written."""
    problems = sharegpt_problems(record)
    if problems:
        return problems, {}, False
    if len(record["messages"]) != 2 or len(record["images"]) != 2:
        return ["not one critique step (one user and one assistant turn, two images)"], {}, False
    user, assistant = (m["content"] for m in record["messages"])
    instructions = read_release_prompt(template, user)
    if instructions is None:
        return ["the user turn is not the prompt template filled in"], {}, False
    v = parse_thinker_answer(assistant)
    lenient = not v.format_ok
    if lenient:
        v = parse_thinker_answer_lenient(assistant)
    if not v.format_ok:
        return [f"the assistant turn does not parse: {v.error}"], {}, False
    assert v.semantic is not None and v.quality is not None
    if not (0 <= v.semantic <= 10 and 0 <= v.quality <= 10) or not v.answer:
        return ["the assistant turn needs scores in 0-10 and a non-empty answer"], {}, False
    fields = {
        "original_instruction": instructions[0],
        "previous_instruction": instructions[1],
        "target_reason": v.reason,
        "target_semantic": v.semantic,
        "target_quality": v.quality,
        "target_answer": v.answer,
        "target_text": format_thinker_answer(v.reason, v.semantic, v.quality, v.answer),
        "images": list(record["images"]),
    }
    return [], fields, lenient


def easyr1_fields(record: Any) -> tuple[list[str], dict[str, Any]]:
    """(problems, the step-sample fields an EasyR1 record holds); scores must be in 0-10."""
    problems = easyr1_problems(record)
    if problems:
        return problems, {}
    ev = record["evaluation"]
    if not (0 <= ev["semantics"] <= 10 and 0 <= ev["quality"] <= 10):
        return ["evaluation scores must be in 0-10"], {}
    return [], {
        "original_instruction": record["origin_prompt"],
        "previous_instruction": record["rewritten_prompt"],
        "target_semantic": float(ev["semantics"]),
        "target_quality": float(ev["quality"]),
        "images": [record["origin_image_path"], record["edited_image_path"]],
    }


def _resolve(path: str, image_dir: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else image_dir / p


def _load_records(fmt: Format, path: Path) -> list[Any]:
    if fmt == "llamafactory":
        records = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(records, list):
            raise ValueError(f"{path}: a LLaMA-Factory sharegpt file is a JSON array")
        return records
    out: list[Any] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as exc:
                out.append(ValueError(f"line {n + 1} is not JSON: {exc.msg}"))
    return out


def release_file(fmt: Format, data: Path) -> Path:
    """The release file: `data` itself, or in a folder the file its dataset_info.json names (llamafactory; the
    only entry, or the release's dataset name) or rl_train.jsonl (easyr1)."""
    data = Path(data)
    if data.is_file():
        return data
    if not data.is_dir():
        raise FileNotFoundError(f"{data}: no such file or folder")
    if fmt == "easyr1":
        return data / RL_FILE
    info = json.loads((data / DATASET_INFO).read_text())
    entry = info.get(DATASET_NAME) or (next(iter(info.values())) if len(info) == 1 else None)
    if entry is None:
        raise ValueError(f"{data / DATASET_INFO}: name the file (several datasets, none is {DATASET_NAME})")
    return data / entry["file_name"]


def import_steps(
    data: Path,
    out: Path,
    fmt: Format,
    image_dir: Path | None = None,
    template: str | None = None,
    editor: str = "",
    split: str | None = None,
) -> Report:
    """Read a release file (or the folder an export wrote) into a step-sample dataset at `out`.

    Relative image paths resolve against `image_dir` (default: the file's folder). A record that breaks the
    format's rules, whose user turn is not `template` filled in, whose answer does not parse, or whose images
    cannot be read is not imported; the report (also in the manifest, key `import`) says which and why.
    `editor` names the editor of params.editors that the rl stage's edit reward should use; `split` defaults
    to sft for llamafactory and rl for easyr1."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {list(FORMATS)}")
    template = RELEASE_PROMPT_TEMPLATE if template is None else template
    check_release_template(template)
    path = release_file(fmt, Path(data))
    image_dir = path.parent if image_dir is None else Path(image_dir)
    split = split or ("sft" if fmt == "llamafactory" else "rl")
    report = Report(format=fmt, defaults=import_defaults(fmt, editor, split))
    rows: list[dict[str, Any]] = []
    images_hash = hashlib.sha256()
    images: dict[str, bytes] = {}
    for i, record in enumerate(_load_records(fmt, path)):
        problems, fields = _import_one(record, fmt, template, image_dir, report)
        if problems:
            report.skipped.append(Problem(str(i), problems))
            continue
        for png in fields.pop("_images"):
            images_hash.update(hashlib.sha256(png).digest())
            images[sha256_bytes(png)] = png
        sample_id = f"{fmt}-{i:06d}"
        rows.append(_step_sample(sample_id, fields, report.defaults))
    report.written = len(rows)
    settings = {"format": fmt, "editor": editor, "split": split, "template_sha256": _sha(template)}
    lineage = {
        "stage": f"import-{fmt}",
        "params_sha256": _sha(json.dumps(settings, sort_keys=True)),
        "params_sections": [],
        "code_version": code_version(__name__),
        "inputs": {"release_file": hash_path(path), "images": images_hash.hexdigest()},
        "models": {},
    }
    extra = {"lineage": lineage, "import": {**report.to_dict(), "settings": settings, "source": str(path)}}

    def store(folder: Path) -> dict[str, Any]:
        made = write_image_store(folder / IMAGES_DIR, (image_record(images[sha]) for sha in sorted(images)))
        return {"images": store_ref(made, IMAGES_DIR)}

    write_dataset(Path(out), rows, STEP_SAMPLE_SCHEMA, ROWS_PER_SHARD, extra, store)
    report.files = [str(out), str(Path(out) / IMAGES_DIR)]
    return report


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _import_one(
    record: Any, fmt: Format, template: str, image_dir: Path, report: Report
) -> tuple[list[str], dict[str, Any]]:
    """(problems, the record's fields in step-sample columns, images loaded)."""
    if isinstance(record, Exception):
        return [str(record)], {}
    if fmt == "llamafactory":
        problems, fields, lenient = sharegpt_fields(record, template)
        report.lenient += lenient
    else:
        problems, fields = easyr1_fields(record)
    if problems:
        return problems, {}
    paths = fields.pop("images")
    try:
        images = [_png_bytes(_resolve(p, image_dir)) for p in paths]
    except OSError as exc:  # a missing file, or one PIL cannot read
        return [f"image: {exc}"], {}
    return [], {**fields, **image_columns(images[0], images[1]), "_images": images}


def _step_sample(sample_id: str, fields: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    row = {name: defaults.get(name) for name in STEP_SAMPLE_SCHEMA.names}
    row.update(sample_id=sample_id, trajectory_id=sample_id, task_id=sample_id)
    row.update(fields)
    return row


def summary(report: dict[str, Any], limit: int = 5) -> Iterator[str]:
    """Lines for a person from a report's dict: counts, the first skipped records and why, defaulted fields."""
    skipped = report["skipped"]
    yield f"{report['format']}: {report['written']} written, {len(skipped)} skipped"
    for p in skipped[:limit]:
        yield f"  skipped {p['record']}: {'; '.join(p['reasons'])}"
    if len(skipped) > limit:
        yield f"  ... {len(skipped) - limit} more in the report"
    if report["defaults"]:
        given = ", ".join(f"{k}={v!r}" for k, v in report["defaults"].items())
        yield f"  defaults for fields the format does not hold: {given}"
    if report["lenient"]:
        yield f"  {report['lenient']} answers parsed only leniently (as the release's reward parser reads them)"
