"""GEdit-Bench (Step1X-Edit): VIEScore SC / PQ / O on 0-10, per language, macro-averaged over task types.

Data: HF `stepfun-ai/GEdit-Bench` as `save_to_disk` writes it (a folder of `data-*.arrow` shards, with or
without `state.json`), or a hub id `datasets` can load (from the local cache when offline); one split.
Rows of one language (params benchmarks.gedit.language, English by default) are the items; the editor
edits `input_image`, as the maintainers advise.
Output: `<run>/fullset/<task_type>/<en|cn>/<key>.png` and the source beside it as `<key>_SRCIMG.png`: the
official `test_gedit_score.py` skips (silently) an item lacking either, with `<run>` as its `<model>` folder.
Scoring (VIEScore "tie" mode): an SC call shows source and edit and asks for [editing success, over-editing],
SC = min; a PQ call shows the edit alone and asks for [naturalness, artifacts], PQ = min; O = sqrt(SC * PQ).
The edit is resized to the source's size and both are sent as JPEG. Statistics: the mean of SC, PQ and O per
task type, then the unweighted mean over task types; again over the `Intersection_exist` rows.
Unlike the official parser, an unparsable answer is never replaced by a random score: it is asked again,
then reported as a missing score.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from editthinker.benchmarks.base import (
    BenchItem,
    JudgeCall,
    Loaded,
    ScoredItem,
    by,
    image_part,
    jpeg_of,
    json_in,
    mean,
    png_of,
    size_of,
    text_part,
    write_png,
)
from editthinker.config import BenchmarksConfig
from editthinker.protocol import FormatError

COLUMNS = ("task_type", "key", "instruction", "instruction_language", "input_image")
METRICS = ("semantic", "quality", "overall")

SC_PROMPT = """You are a professional digital artist reviewing the work of an AI image editor.
You are shown two images: the first is the ORIGINAL image, the second is the EDITED image the AI produced
from it for the editing instruction below. Rate the edit with two integers from 0 to 10:
1. editing success: how completely and correctly the EDITED image carries out the instruction
   (0: not at all, 10: perfectly);
2. over-editing: how well everything the instruction does not ask to change was left as it was
   (0: the edited image is unrelated to the original, 10: nothing was changed beyond the instruction).
Editing instruction: {instruction}
Answer with JSON only, in this form:
{{"score": [editing_success, over_editing], "reasoning": "one or two sentences"}}"""

PQ_PROMPT = """You are a professional digital artist judging the quality of an AI-generated image.
You are shown one image. Rate it with two integers from 0 to 10:
1. naturalness: how natural and physically plausible the image looks: lighting, shadows, perspective, sense of
   distance (0: clearly unnatural, 10: fully natural);
2. artifacts: how free the image is of artifacts such as distortion, blur, noise, broken or watermark-like
   patterns and malformed parts (0: heavy artifacts, 10: none at all).
Answer with JSON only, in this form:
{"score": [naturalness, artifacts], "reasoning": "one or two sentences"}"""


def parse_pair(raw: str) -> dict[str, float]:
    """{"score": [a, b], ...} with two numbers in 0-10 -> {"a": a, "b": b}; FormatError otherwise."""
    d = json_in(raw, "VIEScore answer")
    s = d.get("score")
    if not isinstance(s, list) or len(s) != 2:
        raise FormatError(f"'score' must be a list of two numbers, got {s!r}")
    for v in s:
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 10:
            raise FormatError(f"score {v!r} is not a number in 0-10")
    return {"a": float(s[0]), "b": float(s[1])}


def _open(data: str) -> Any:
    import datasets

    p = Path(data)
    if p.is_dir():
        if (p / "state.json").is_file() or (p / "dataset_dict.json").is_file():
            ds = datasets.load_from_disk(str(p))
        else:
            shards = sorted(p.glob("*.arrow")) or sorted(p.glob("data/*.arrow"))
            if not shards:
                raise FileNotFoundError(f"gedit: {p} has neither a save_to_disk dataset nor *.arrow shards")
            ds = datasets.concatenate_datasets([datasets.Dataset.from_file(str(s)) for s in shards])
    else:
        ds = datasets.load_dataset(data)
    if isinstance(ds, datasets.DatasetDict):
        split = "train" if "train" in ds else (next(iter(ds)) if len(ds) == 1 else None)
        if split is None:
            raise ValueError(f"gedit: {data} has splits {list(ds)} and no 'train'")
        ds = ds[split]
    missing = [c for c in COLUMNS if c not in ds.column_names]
    if missing:
        raise ValueError(f"gedit: {data} lacks the columns {missing} (has {ds.column_names})")
    return ds


class GEdit:
    name = "gedit"
    title = "GEdit-Bench"
    headline = "overall"
    scale = "0-10"
    default_judge = "gpt-4.1"

    def load(self, data: str, cfg: BenchmarksConfig) -> Loaded:
        import datasets

        lang = cfg.gedit.language
        ds = _open(data)
        meta_cols = [c for c in ds.column_names if c not in ("input_image", "input_image_raw")]
        rows = ds.select_columns(meta_cols).to_list()
        images = ds.select_columns(["input_image"]).cast_column("input_image", datasets.Image(decode=False))

        def loader(i: int) -> Any:
            def load() -> bytes:
                im = images[i]["input_image"]
                return png_of(im["bytes"] if im.get("bytes") else Path(im["path"]))

            return load

        items: list[BenchItem] = []
        seen: set[str] = set()
        for i, r in enumerate(rows):
            if r["instruction_language"] != lang:
                continue
            key = str(r["key"])
            if key in seen:
                raise ValueError(f"gedit: key {key!r} appears twice for language {lang!r}")
            seen.add(key)
            meta = {"language": lang, "intersection": bool(r.get("Intersection_exist", False))}
            items.append(BenchItem(key, str(r["task_type"]), str(r["instruction"]), loader(i), meta))
        if not items:
            raise ValueError(f"gedit: no rows with instruction_language == {lang!r} in {data}")
        return Loaded(items, {})

    def _dir(self, run_dir: Path, item: BenchItem) -> Path:
        return run_dir / "fullset" / item.category / item.meta["language"]

    def output_path(self, run_dir: Path, item: BenchItem) -> Path:
        return self._dir(run_dir, item) / f"{item.item_id}.png"

    def write_output(self, run_dir: Path, item: BenchItem, edited_png: bytes, source_png: bytes) -> None:
        write_png(self._dir(run_dir, item) / f"{item.item_id}_SRCIMG.png", source_png)
        write_png(self.output_path(run_dir, item), edited_png)

    def find_output(self, run_dir: Path, item: BenchItem) -> Path | None:
        out = self.output_path(run_dir, item)
        src = self._dir(run_dir, item) / f"{item.item_id}_SRCIMG.png"
        return out if out.is_file() and src.is_file() else None

    def judge_calls(self, item: BenchItem, edited: bytes, source_png: bytes) -> list[JudgeCall]:
        size = size_of(source_png)
        src, out = jpeg_of(source_png), jpeg_of(edited, size=size)
        sc = [text_part(SC_PROMPT.format(instruction=item.instruction)), image_part(src, "image/jpeg"),
              image_part(out, "image/jpeg")]  # fmt: skip
        pq = [text_part(PQ_PROMPT), image_part(out, "image/jpeg")]
        return [
            JudgeCall("sc", [{"role": "user", "content": sc}], parse_pair),
            JudgeCall("pq", [{"role": "user", "content": pq}], parse_pair),
        ]

    def item_scores(self, item: BenchItem, answers: dict[str, dict[str, float]]) -> ScoredItem:
        sc = min(answers["sc"].values())
        pq = min(answers["pq"].values())
        values = {"semantic": sc, "quality": pq, "overall": math.sqrt(sc * pq)}
        return ScoredItem(item.item_id, item.category, values, {"intersection": item.meta["intersection"]})

    @staticmethod
    def _macro(scored: list[ScoredItem]) -> dict[str, float]:
        types = by(scored, lambda s: s.category).values()
        return {m: mean([mean([s.values[m] for s in group]) for group in types]) for m in METRICS}

    def metrics(self, scored: list[ScoredItem]) -> dict[str, float]:
        out = self._macro(scored)
        inter = [s for s in scored if s.tags.get("intersection")]
        if inter:
            out |= {f"intersection_{k}": v for k, v in self._macro(inter).items()}
        return out

    def breakdown(self, scored: list[ScoredItem]) -> dict[str, dict[str, dict[str, float]]]:
        return {
            "task_type": {
                t: {**{m: mean([s.values[m] for s in g]) for m in METRICS}, "n": float(len(g))}
                for t, g in by(scored, lambda s: s.category).items()
            }
        }
