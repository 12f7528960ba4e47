"""Per-turn cost of the Think-while-Edit loop outside model calls, on `editthinker edit` with tiny models.

Tiny random diffusers editors (built offline, loaded back with from_pretrained) and the expert / a tiny
thinker; each run's trace.json records the loop's wall time and the time spent inside editor, thinker and
judge calls. Prints, per setup, the edits made, loop and model seconds per edit (a turn: a thinker call and, unless the
thinker stopped or its answer did not parse, an edit) and the loop's own share of the wall time.
Numbers only; no pass/fail (target: overhead < 5% of a turn).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch
from test_modules import tests_module

from editthinker import single_edit
from editthinker.config import ThinkerModelConfig, parse_params
from editthinker.models.tiny_vlm import MODEL_KIND, build_tiny_thinker
from editthinker.models.vlm import save_thinker
from editthinker.world.scene import render_png
from editthinker.world.tasks import make_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="one task per setup: a smoke run, not figures")
    args = ap.parse_args()
    save_tiny = tests_module("tiny_editors").save_tiny
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="edit-overhead-"))
    editors = [{"name": "painter", "kind": "synthetic", "profile": "painter"}]
    for kind in ("instruct-pix2pix", "flux-kontext"):
        save_tiny(kind, tmp / kind)
        editors.append(
            {"name": kind, "kind": "diffusers", "pipeline": kind, "model": str(tmp / kind), "num_inference_steps": 2}
        )
    params = parse_params({"editors": editors})
    model, processor = build_tiny_thinker(ThinkerModelConfig(hidden_size=64, num_heads=4, max_new_tokens=32), seed=1)
    save_thinker(model, processor, tmp / "thinker", MODEL_KIND)
    tasks = [make_task(77, i, 2, 4, {"vague": 1.0}) for i in range(1 if args.quick else 4)]
    head = ("editor", "thinker", "edits", "loop s/edit", "model s/edit", "overhead ms/edit", "overhead %")
    print(f"{head[0]:18} {head[1]:8} {head[2]:>5} {head[3]:>12} {head[4]:>13} {head[5]:>17} {head[6]:>10}")
    for editor in ("painter", "instruct-pix2pix", "flux-kontext"):
        for thinker in ("expert", str(tmp / "thinker")):
            turns = loop = over = model_s = 0.0
            for i, t in enumerate(tasks):
                (tmp / "in.png").write_bytes(render_png(t.source, 64))
                trace = single_edit.run(
                    params, tmp / "in.png", t.instruction, editor, thinker, tmp / f"out-{i}", 5, 0, t.target.to_json()
                )
                tm = trace["timing"]
                turns += len(trace["turns"])
                loop += tm["loop_s"]
                over += tm["overhead_s"]
                model_s += sum(tm["model_s"].values())
            name = "expert" if thinker == "expert" else "tiny-vlm"
            print(
                f"{editor:18} {name:8} {turns:5.0f} {loop / turns:12.4f} {model_s / turns:13.4f} "
                f"{1000 * over / turns:17.3f} {100 * over / loop:10.3f}"
            )
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
