"""Stage 7, evaluate: the held-out synthetic benchmark, every editor under four systems.

Systems: the editor alone (one turn), editor + expert, editor + SFT thinker, editor + RL thinker.
Per system and editor: success rate with a 95% Wilson interval, mean semantic / quality / overall, mean
turns, format failures; plus the mean score by turn. The RL thinker's scores are the challenger's.
The tasks start from scenes of the world's held-out part (`world.tasks.scene_partition`), which no training
task draws from, so the benchmark shares no source scene with training whatever the seeds.
"""

from __future__ import annotations

from pathlib import Path
from statistics import fmean
from typing import Any

from tqdm import tqdm

from editthinker.backends.factory import build_editors, build_expert, build_judge, close_roles, load_vlm_thinker
from editthinker.config import Params
from editthinker.lineage import make_lineage, verify_checkpoint
from editthinker.loop import Episode, run_episodes
from editthinker.outcomes import per_item, summarise, world_starts
from editthinker.roles import Thinker
from editthinker.stages import sections_of
from editthinker.stats import compare
from editthinker.storage import atomic_dir, write_json, writer_lock
from editthinker.usage import api_usage

SECTIONS = sections_of("evaluate")
BASELINE = "editor"
CHALLENGER = "editor+rl"
EXPERT = "editor+expert"
SFT = "editor+sft"
SYSTEMS = (BASELINE, EXPERT, SFT, CHALLENGER)  # the columns of score_by_turn.json (dvc.yaml plots them)
# paired comparisons written to summary.json: (system b, system a) -> b - a on the same items
PAIRS = ((CHALLENGER, BASELINE), (SFT, BASELINE), (CHALLENGER, SFT))


def paired(items: dict[str, dict[str, list[Any]]], confidence: float) -> dict[str, Any]:
    """b - a for each pair of PAIRS, on the same items: success and overall with paired bootstrap intervals,
    McNemar on success."""
    out = {}
    for b, a in PAIRS:
        x, y = items[a], items[b]
        if x["item"] != y["item"]:
            raise ValueError(f"evaluate: {a} and {b} were not run on the same items")
        out[f"{b} - {a}"] = compare(x["success"], y["success"], x["overall"], y["overall"], confidence)
    return out


def score_by_turn(episodes: list[Episode], max_turns: int) -> list[float]:
    """Mean overall score after t turns (an episode that stopped keeps its last edit)."""
    out = []
    for t in range(1, max_turns + 1):
        vals = []
        for e in episodes:
            done = [x for x in e.turns if x.turn <= t and x.score is not None]
            vals.append(done[-1].score.overall if done and done[-1].score else 0.0)
        out.append(fmean(vals))
    return out


def markdown_table(systems: dict[str, dict[str, dict[str, Any]]]) -> str:
    lines = [
        "| system | editor | success % [95% CI] | semantic | quality | overall | turns | format failures "
        "| failed edits called satisfied % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for system, by_editor in systems.items():
        for editor, m in by_editor.items():
            lo, hi = m["success_ci95"]
            blind = m.get("satisfied_on_failed")
            lines.append(
                f"| {system} | {editor} | {100 * m['success_rate']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] "
                f"| {m['semantic']:.2f} | {m['quality']:.2f} | {m['overall']:.2f} | {m['turns']:.2f} "
                f"| {m['format_failures']} | {'-' if blind is None else f'{100 * blind:.1f}'} |"
            )
    return "\n".join(lines) + "\n"


def paired_table(pairs: dict[str, Any]) -> str:
    """The paired differences (same items), success in points and overall score, with their 95% intervals."""
    lines = [
        "Paired on the same items (b - a), 95% bootstrap intervals; McNemar p on success:\n",
        "| b - a | success points [95% CI] | overall [95% CI] | McNemar p |",
        "|---|---|---|---|",
    ]
    for name, c in pairs.items():
        s, o = c["success_rate"], c["overall"]
        lines.append(
            f"| {name} | {100 * s['mean']:+.1f} [{100 * s['low']:+.1f}, {100 * s['high']:+.1f}] "
            f"| {o['mean']:+.2f} [{o['low']:+.2f}, {o['high']:+.2f}] | {c['mcnemar']['p_value']:.3g} |"
        )
    return "\n".join(lines) + "\n"


def scalar_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The benchmark's numbers by flat name, as a pipeline step logs them: the challenger's (`challenger_*`),
    its lift over the editor alone (`lift_*`) and each system's success rate, overall score and turns over all
    editors (`<system>.<name>`, as `dvc metrics show` names metrics.json's)."""
    out = {f"challenger_{k}": v for k, v in sorted(summary["challenger"].items())}
    out.update({f"lift_{k}": v for k, v in sorted(summary["lift_over_editor_alone"].items())})
    for system, by_editor in summary["systems"].items():
        out.update({f"{system}.{k}": by_editor["all"][k] for k in ("success_rate", "overall", "turns")})
    return {k: float(v) for k, v in out.items()}


def plot_by_turn(curves: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for system, ys in curves.items():
        ax.plot(range(1, len(ys) + 1), ys, marker="o", label=system)
    ax.set(xlabel="turn", ylabel="mean overall score (0-10)", title="Score by turn, held-out benchmark")
    ax.set_xticks(range(1, max(len(ys) for ys in curves.values()) + 1))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def run(params: Params, sft_checkpoint: Path, rl_checkpoint: Path, out_dir: Path) -> dict[str, Any]:
    """Both checkpoints are verified against their checksums before they are loaded."""
    with writer_lock(out_dir):
        verify_checkpoint(Path(sft_checkpoint))
        verify_checkpoint(Path(rl_checkpoint))
        return _run(params, sft_checkpoint, rl_checkpoint, out_dir)


def _run(params: Params, sft_checkpoint: Path, rl_checkpoint: Path, out_dir: Path) -> dict[str, Any]:
    ev = params.evaluate
    editors = build_editors(params)
    judge = build_judge(params.judge)
    thinkers: dict[str, Thinker | None] = {
        BASELINE: None,
        EXPERT: build_expert(params.expert, ev.seed),
        SFT: load_vlm_thinker(sft_checkpoint, params.thinker, params.inference),
        CHALLENGER: load_vlm_thinker(rl_checkpoint, params.thinker, params.inference),
    }
    starts = world_starts(params, ev.seed, ev.num_tasks, "held_out")
    systems: dict[str, dict[str, dict[str, Any]]] = {}
    curves: dict[str, list[float]] = {}
    items: dict[str, dict[str, list[Any]]] = {}
    # one bar over every (system, editor) episode; the episodes of a pair run in lockstep (so the thinker
    # batches exactly as without a bar), and the bar's label follows the pair and the turn being played
    bar = tqdm(total=len(thinkers) * len(editors) * len(starts), desc="evaluate", unit="episode", disable=None)
    for system, thinker in thinkers.items():
        everything: list[Episode] = []
        systems[system] = {}
        items[system] = {}
        for name, editor in editors.items():
            bar.set_postfix_str(f"{system} / {name}, turn 1")

            def on_turn(turn: int, system: str = system, name: str = name) -> None:
                bar.set_postfix_str(f"{system} / {name}, turn {turn}")

            watch = on_turn if thinker is not None else None  # the editor alone plays one turn
            episodes = run_episodes(starts, editor, thinker, judge, ev.max_turns, watch)
            bar.update(len(starts))
            systems[system][name] = summarise(episodes, params)
            everything += episodes
            for key, values in per_item(episodes, name, params).items():
                items[system].setdefault(key, []).extend(values)
        systems[system]["all"] = summarise(everything, params)
        curves[system] = score_by_turn(everything, ev.max_turns)
    bar.close()
    close_roles(*editors.values(), judge, *thinkers.values())
    models = {f"editor:{n}": e.model_id for n, e in editors.items()}
    models.update({s: t.model_id for s, t in thinkers.items() if t is not None}, judge=judge.model_id)
    inputs = {"sft_checkpoint": sft_checkpoint, "rl_checkpoint": rl_checkpoint}
    challenger = systems[CHALLENGER]["all"]
    pairs = paired(items, 0.95)
    summary = {
        "systems": systems,
        "score_by_turn": curves,
        "challenger": {
            k: challenger[k] for k in ("success_rate", "overall", "semantic", "quality", "format_failure_rate")
        },
        "lift_over_editor_alone": {k: challenger[k] - systems[BASELINE]["all"][k] for k in ("success_rate", "overall")},
        "paired": pairs,
        "per_item": items,
        "lineage": make_lineage("evaluate", params, SECTIONS, inputs, models),
        "api_usage": api_usage(expert=thinkers[EXPERT], judge=judge),
    }
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / "summary.json", summary)
        (tmp / "summary.md").write_text(
            f"## Held-out benchmark: {ev.num_tasks} tasks, world seed {ev.seed}, max {ev.max_turns} turns\n\n"
            + markdown_table(systems)
            + "\n"
            + paired_table(pairs)
        )
        write_json(
            tmp / "metrics.json",
            {s: {k: m["all"][k] for k in ("success_rate", "overall", "turns")} for s, m in systems.items()},
        )
        write_json(
            tmp / "score_by_turn.json",
            [{"turn": t + 1, **{s: c[t] for s, c in curves.items()}} for t in range(ev.max_turns)],
        )
        plot_by_turn(curves, tmp / "score_by_turn.png")
    return summary
