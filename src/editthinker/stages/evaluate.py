"""Stage 7, evaluate: the held-out synthetic benchmark, every editor under four systems.

Systems: the editor alone (one turn), editor + expert, editor + SFT thinker, editor + RL thinker.
Per system and editor: success rate with a 95% Wilson interval, mean semantic / quality / overall, mean
turns, format failures; plus the mean score by turn. The RL thinker's scores are the challenger's.
"""

from __future__ import annotations

from pathlib import Path
from statistics import fmean
from typing import Any

from scipy.stats import binomtest

from editthinker.backends.factory import build_editors, build_expert, build_judge, load_vlm_thinker
from editthinker.config import Params
from editthinker.lineage import make_lineage, verify_checkpoint
from editthinker.loop import Episode, EpisodeStart, run_episodes
from editthinker.roles import Thinker
from editthinker.stages import sections_of
from editthinker.storage import atomic_dir, write_json, writer_lock
from editthinker.usage import api_usage
from editthinker.world.scene import render_png
from editthinker.world.tasks import make_tasks

SECTIONS = sections_of("evaluate")
CHALLENGER = "editor+rl"
BASELINE = "editor"


def success(e: Episode, params: Params) -> bool:
    s = e.final.score
    assert s is not None
    return s.semantic >= params.evaluate.success_semantic and s.quality >= params.evaluate.success_quality


def summarise(episodes: list[Episode], params: Params) -> dict[str, Any]:
    n = len(episodes)
    k = sum(success(e, params) for e in episodes)
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    scores = [e.final.score for e in episodes if e.final.score is not None]
    return {
        "n": n,
        "success_rate": k / n,
        "success_ci95": [ci.low, ci.high],
        "semantic": fmean(s.semantic for s in scores),
        "quality": fmean(s.quality for s in scores),
        "overall": fmean(s.overall for s in scores),
        "turns": fmean(len(e.turns) for e in episodes),
        "format_failures": sum(e.format_failures for e in episodes),
    }


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
        "| system | editor | success % [95% CI] | semantic | quality | overall | turns | format failures |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for system, by_editor in systems.items():
        for editor, m in by_editor.items():
            lo, hi = m["success_ci95"]
            lines.append(
                f"| {system} | {editor} | {100 * m['success_rate']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}] "
                f"| {m['semantic']:.2f} | {m['quality']:.2f} | {m['overall']:.2f} | {m['turns']:.2f} "
                f"| {m['format_failures']} |"
            )
    return "\n".join(lines) + "\n"


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
        "editor+expert": build_expert(params.expert, ev.seed),
        "editor+sft": load_vlm_thinker(sft_checkpoint, params.thinker, params.inference),
        CHALLENGER: load_vlm_thinker(rl_checkpoint, params.thinker, params.inference),
    }
    w = params.world
    tasks = make_tasks(ev.seed, range(ev.num_tasks), w.min_shapes, w.max_shapes, w.styles)
    starts = [
        EpisodeStart(t.task_id, render_png(t.source, w.image_size), t.instruction, i, t.target.to_json())
        for i, t in tasks.items()
    ]
    systems: dict[str, dict[str, dict[str, Any]]] = {}
    curves: dict[str, list[float]] = {}
    for system, thinker in thinkers.items():
        everything: list[Episode] = []
        systems[system] = {}
        for name, editor in editors.items():
            episodes = run_episodes(starts, editor, thinker, judge, ev.max_turns)
            systems[system][name] = summarise(episodes, params)
            everything += episodes
        systems[system]["all"] = summarise(everything, params)
        curves[system] = score_by_turn(everything, ev.max_turns)
    models = {f"editor:{n}": e.model_id for n, e in editors.items()}
    models.update({s: t.model_id for s, t in thinkers.items() if t is not None}, judge=judge.model_id)
    inputs = {"sft_checkpoint": sft_checkpoint, "rl_checkpoint": rl_checkpoint}
    challenger = systems[CHALLENGER]["all"]
    summary = {
        "systems": systems,
        "score_by_turn": curves,
        "challenger": {k: challenger[k] for k in ("success_rate", "overall", "semantic", "quality")},
        "lift_over_editor_alone": {k: challenger[k] - systems[BASELINE]["all"][k] for k in ("success_rate", "overall")},
        "lineage": make_lineage("evaluate", params, SECTIONS, inputs, models),
        "api_usage": api_usage(expert=thinkers["editor+expert"], judge=judge),
    }
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / "summary.json", summary)
        (tmp / "summary.md").write_text(
            f"## Held-out benchmark: {ev.num_tasks} tasks, world seed {ev.seed}, max {ev.max_turns} turns\n\n"
            + markdown_table(systems)
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
