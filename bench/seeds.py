"""`make seeds` (and the last part of `make bench`): the demo's held-out figures over training seeds and world seeds.

Trained figures move with float-level differences between machines and with the training seed, so one run proves
little. This script builds the demo's data once (`editthinker run --to validate`: the data path is deterministic),
then for every training seed s trains SFT and RL (`sft.seed` = s, `rl.seed` = s + 2; 11 is the demo's own) and
evaluates both checkpoints on every world seed of the held-out benchmark (`evaluate.seed`). It writes
`reports/seeds.md` (the table README.md shows) and `reports/seeds.json` (every run's figures and lineage), and
prints the table: per system, success % and overall as mean and sample standard deviation over the training
seeds; per paired comparison, the mean difference, the range of the runs' 95% intervals, and in how many runs the
interval lies above 0. Every stage runs through the `editthinker` CLI, as `make demo` does.

The rl stage chooses its output (rl.select: the RL model, or its SFT start when RL did worse on validation tasks of
the training scenes). Where it chose SFT, the RL model as trained is made again without that choice
(`rl.select=null`, the same seed and data: the same model) and evaluated too, as the row `editor+rl as trained`: the
table shows what GRPO itself did as well as what the stage ships.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("editor", "editor+sft", "editor+rl", "editor+expert")
PAIRS = ("editor+rl - editor", "editor+sft - editor", "editor+rl - editor+sft")
# the RL model as GRPO left it, before rl.select chose between it and its SFT start (the same model where RL was kept)
AS_TRAINED = "editor+rl as trained"
# --quick: a smoke run of the whole script (CI); its figures mean nothing
QUICK = ["generate.num_tasks=24", "generate.shards=1", "sft.max_steps=4", "rl.max_steps=2", "rl.select.num_tasks=4",
         "evaluate.num_tasks=6", "evaluate.max_turns=2"]  # fmt: skip


def cli(work: Path, args: list[str], params: list[str]) -> None:
    cmd = [sys.executable, "-m", "editthinker.cli", *args, "--params", str(work / "params.yaml")]
    cmd += [x for p in params for x in ("--set", p)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def mean_sd(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.fmean(xs):.2f} ± {sd:.2f}"


def table(runs: list[dict[str, Any]], world_seeds: list[int], train_seeds: list[int]) -> str:
    out = [f"Held-out benchmark over {len(train_seeds)} training seeds (sft.seed = s, rl.seed = s + 2 for s in "
           f"{train_seeds}) and {len(world_seeds)} world seeds; mean ± sd over training seeds.\n"]  # fmt: skip
    for w in world_seeds:
        rs = [r for r in runs if r["world_seed"] == w]
        n = rs[0]["items"]
        out += [f"\n### World seed {w} ({n} items)\n", "| system | success % | overall | format failures |",
                "|---|---|---|---|"]  # fmt: skip
        for s in (*SYSTEMS, AS_TRAINED):
            if not all(s in r["systems"] for r in rs):
                continue
            succ = [100 * r["systems"][s]["success_rate"] for r in rs]
            ovr = [r["systems"][s]["overall"] for r in rs]
            fails = [r["systems"][s]["format_failures"] for r in rs]
            out.append(f"| {s} | {mean_sd(succ)} | {mean_sd(ovr)} | {sum(fails)} |")
        out += ["", "| paired b - a | success points: mean [lowest CI low, highest CI high] | interval above 0 |"
                " interval below 0 | overall: mean | overall interval above 0 | below 0 |",
                "|---|---|---|---|---|---|---|"]  # fmt: skip
        for p in (*PAIRS, f"{AS_TRAINED} - editor+sft"):
            if not all(p in r["paired"] for r in rs):
                continue
            d = [r["paired"][p] for r in rs]
            pts = [100 * x["success_rate"]["mean"] for x in d]
            lo = min(100 * x["success_rate"]["low"] for x in d)
            hi = max(100 * x["success_rate"]["high"] for x in d)
            above = sum(x["success_rate"]["low"] > 0 for x in d)
            below = sum(x["success_rate"]["high"] < 0 for x in d)
            o_above = sum(x["overall"]["low"] > 0 for x in d)
            o_below = sum(x["overall"]["high"] < 0 for x in d)
            o_mean = statistics.fmean(x["overall"]["mean"] for x in d)
            out.append(f"| {p} | {statistics.fmean(pts):+.1f} [{lo:+.1f}, {hi:+.1f}] | {above}/{len(d)} | "
                       f"{below}/{len(d)} | {o_mean:+.2f} | {o_above}/{len(d)} | {o_below}/{len(d)} |")  # fmt: skip
    kept = {r["train_seed"]: r["selection"]["kept"] for r in runs if "selection" in r}
    if kept:
        rl = sorted(s for s, k in kept.items() if k == "rl")
        out.append(f"\nrl.select kept the RL model in {len(rl)} of {len(kept)} training seeds ({rl or 'none'}) and its "
                   f"SFT start in the others; `{AS_TRAINED}` is the RL model before that choice.")  # fmt: skip
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument(
        "--train-seeds",
        default="11,21,31",
        help="comma-separated; seed s trains with sft.seed=s, rl.seed=s+2 (11: the demo's own seeds)",
    )
    ap.add_argument("--world-seeds", default="990001,990002", help="comma-separated evaluate.seed values")
    ap.add_argument("--work", type=Path, default=ROOT / ".bench" / "seeds", help="scratch folder")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where seeds.md and seeds.json go (default: reports/, or the scratch folder with --quick)",
    )
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, not figures")
    ap.add_argument(
        "--render",
        type=Path,
        default=None,
        help="only write the table again from a seeds.json an earlier run wrote (no training)",
    )
    a = ap.parse_args()
    if a.render is not None:
        saved = json.loads(a.render.read_text())
        print(table(saved["runs"], saved["world_seeds"], saved["train_seeds"]), end="")
        return
    train_seeds = [int(s) for s in a.train_seeds.split(",")]
    world_seeds = [int(s) for s in a.world_seeds.split(",")]
    if a.quick:  # a smoke run of every step: one training seed on one world seed
        train_seeds, world_seeds = train_seeds[:1], world_seeds[:1]
    extra = QUICK if a.quick else []
    a.work.mkdir(parents=True, exist_ok=True)
    a.out = a.out or (a.work if a.quick else ROOT / "reports")
    (a.work / "params.yaml").write_text(a.params.read_text())
    t0 = time.perf_counter()
    cli(a.work, ["run", "--to", "validate", "--stats", "run_stats.json", "--report", "run.html"], extra)
    runs: list[dict[str, Any]] = []
    for s in train_seeds:
        seed_dir = f"seed-{s}"
        trained = [*extra, f"sft.seed={s}", f"rl.seed={s + 2}"]
        cli(a.work, ["sft", "--data", "data/steps/sft", "--out", f"{seed_dir}/sft"], trained)
        cli(a.work, ["rl", "--data", "data/steps/rl", "--sft-checkpoint", f"{seed_dir}/sft", "--out",
                     f"{seed_dir}/rl"], trained)  # fmt: skip
        selection = json.loads((a.work / seed_dir / "rl" / "metrics.json").read_text()).get("selection")
        as_trained = f"{seed_dir}/rl"
        if selection is not None and selection["kept"] == "sft":  # the RL model itself, for the table: again, unchosen
            as_trained = f"{seed_dir}/rl-as-trained"
            cli(a.work, ["rl", "--data", "data/steps/rl", "--sft-checkpoint", f"{seed_dir}/sft", "--out", as_trained],
                [*trained, "rl.select=null"])  # fmt: skip
            again = json.loads((a.work / as_trained / "metrics.json").read_text())["model_id"]
            if again != selection["trained_model_id"]:
                sys.exit(f"{as_trained}: RL trained again gave {again}, not the model rl.select refused "
                         f"({selection['trained_model_id']})")  # fmt: skip
        for w in world_seeds:
            run: dict[str, Any] = {"train_seed": s, "world_seed": w}
            for rl_dir, key in ((f"{seed_dir}/rl", ""), (as_trained, "as trained")):
                out = f"{seed_dir}/eval-{w}" + ("-as-trained" if key and as_trained != f"{seed_dir}/rl" else "")
                if not (a.work / out / "summary.json").exists():
                    cli(a.work, ["evaluate", "--sft-checkpoint", f"{seed_dir}/sft", "--rl-checkpoint", rl_dir,
                                 "--out", out], [*trained, f"evaluate.seed={w}"])  # fmt: skip
                summary = json.loads((a.work / out / "summary.json").read_text())
                if not key:
                    run.update(items=len(summary["per_item"]["editor"]["item"]), lineage=summary["lineage"],
                               systems={k: v["all"] for k, v in summary["systems"].items()},
                               paired=dict(summary["paired"]))  # fmt: skip
                else:
                    run["systems"][AS_TRAINED] = summary["systems"]["editor+rl"]["all"]
                    run["paired"][f"{AS_TRAINED} - editor+sft"] = summary["paired"]["editor+rl - editor+sft"]
            if selection is not None:
                run["selection"] = selection
            runs.append(run)
            print(f"seed {s}, world {w}: done ({time.perf_counter() - t0:.0f} s)", flush=True)
    text = table(runs, world_seeds, train_seeds)
    command = "make seeds" if not a.quick else "python bench/seeds.py --quick"
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "seeds.md").write_text(f"<!-- written by `{command}`; do not edit by hand -->\n" + text)
    (a.out / "seeds.json").write_text(json.dumps({"train_seeds": train_seeds, "world_seeds": world_seeds,
                                                  "runs": runs}, indent=1, sort_keys=True) + "\n")  # fmt: skip
    print(text)
    print(f"seeds: {len(runs)} evaluations in {time.perf_counter() - t0:.0f} s -> {a.out / 'seeds.md'}")


if __name__ == "__main__":
    main()
