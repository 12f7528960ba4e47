"""The CLI around the stages (--version, help on every option, `run --from/--to/--dry-run`, one-line stage
summaries, evaluate's progress bar) and the HTML run report, checked as text and in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from typer.testing import CliRunner

from editthinker import __version__
from editthinker.cli import STAGE_IO, Layout, app, report_sources
from editthinker.config import parse_params
from editthinker.lineage import code_version
from editthinker.records import TRAJECTORY_SCHEMA, iter_rows, read_manifest, write_dataset
from editthinker.report import Sources, png_uri, write_report
from editthinker.stages import STAGES
from editthinker.summaries import describe

ROOT = Path(__file__).resolve().parents[1]
TINY = {"generate": {"num_tasks": 12, "max_turns": 3}, "evaluate": {"num_tasks": 3, "max_turns": 2}}
SECTION_HEADINGS = [
    "Overview",
    "Stage timings",
    "Data funnel",
    "Score distributions",
    "Trajectory browser",
    "Data validation",
    "Training",
    "Evaluation",
    "Lineage",
]


def sources(root: Path) -> Sources:
    return report_sources(root)


def run_evaluate_with_expert_thinkers(params: Any, out: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """evaluate's own `run`, with the synthetic expert in the SFT and RL thinkers' seats (no checkpoint to
    load, no torch): the real summary, tables and plot, in seconds."""
    from editthinker.backends.factory import build_expert
    from editthinker.stages import evaluate

    monkeypatch.setattr(evaluate, "load_vlm_thinker", lambda *a: build_expert(params.expert, params.evaluate.seed))
    monkeypatch.setattr(evaluate, "verify_checkpoint", lambda path: "0" * 64)  # stand-ins: nothing to verify
    ckpts = []
    for name in ("sft-ckpt", "rl-ckpt"):  # stand-in folders: their lineage hashes what is there
        (out.parent / name).mkdir(parents=True, exist_ok=True)
        (out.parent / name / "stand-in.txt").write_text(name)
        ckpts.append(out.parent / name)
    result: dict[str, Any] = evaluate.run(params, ckpts[0], ckpts[1], out)
    return result


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """generate, filter and split on 12 tasks into the default layout of a run folder, with their timings."""
    from editthinker.stages import filter as filter_stage
    from editthinker.stages import generate, split

    root = tmp_path_factory.mktemp("run")
    params = parse_params(TINY)
    (root / "params.yaml").write_text(yaml.safe_dump(TINY))
    results: dict[str, Any] = {}
    rows = []
    for stage, call in (
        ("generate", lambda: generate.run(params, root / Layout.trajectories)),
        ("filter", lambda: filter_stage.run(params, root / Layout.trajectories, root / Layout.filtered)),
        ("split", lambda: split.run(params, root / Layout.filtered, root / Layout.sft_data, root / Layout.rl_data)),
    ):
        t0 = time.perf_counter()
        results[stage] = call()
        rows.append({"stage": stage, "wall_s": round(time.perf_counter() - t0, 3), "peak_rss_mib": 1.0, "exit_code": 0})
    (root / Layout.run_stats).parent.mkdir(parents=True)
    (root / Layout.run_stats).write_text(json.dumps({"stages": rows, "total_s": sum(r["wall_s"] for r in rows)}))
    return root, results


def with_evaluation(src: Path, dest: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    shutil.copytree(src, dest)
    return run_evaluate_with_expert_thinkers(parse_params(TINY), dest / Layout.evaluation, monkeypatch)


class Page(HTMLParser):
    """The page's headings, src/href attributes and trajectory cards."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.links: list[str] = []
        self.cards: list[dict[str, str]] = []
        self.images = 0
        self._in: str | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.links += [v for k, v in a.items() if k in ("src", "href", "action", "poster", "data")]
        if tag == "details" and "traj" in a.get("class", ""):
            self.cards.append(a)
        if tag == "img":
            self.images += 1
        if tag == "h2":
            self._in = "h2"

    def handle_data(self, data: str) -> None:
        if self._in == "h2":
            self.headings.append(data)
            self._in = None


def section(page: str, anchor: str) -> str:
    found = re.search(rf'<section id="{anchor}">(.*?)</section>', page, re.S)
    assert found, anchor
    return found.group(1)


# ------------------------------------------------------------------------------------------------- CLI


def test_version_prints_package_code_version_and_commit() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"editthinker {__version__}"
    assert lines[1] == f"code version {code_version()}"
    assert lines[2].startswith("git commit")
    if shutil.which("git") and (ROOT / ".git").exists():
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
        assert head.stdout.strip()[:12] in lines[2]


def _commands(command: Any, path: str) -> list[tuple[str, Any]]:
    """A (click-like) command and all its sub-commands (typer carries its own copy of click: duck-typed)."""
    found = [(path, command)]
    for name, sub in getattr(command, "commands", {}).items():
        found += _commands(sub, f"{path} {name}")
    return found


def test_every_option_of_every_command_has_help() -> None:
    commands = _commands(typer.main.get_command(app), "editthinker")
    try:  # the `pipeline` command hands its arguments to pipelines/cli.py's own app
        from pipelines.cli import app as pipeline_app

        commands += _commands(typer.main.get_command(pipeline_app), "editthinker pipeline")
    except ImportError as exc:
        print(f"pipeline sub-commands not checked: {exc}")
    assert len(commands) > 10
    missing = [
        f"{path} {'/'.join(p.opts)}"
        for path, command in commands
        for p in command.params
        if p.param_type_name == "option" and not p.hidden and not (p.help or "").strip()
    ]
    assert not missing, f"options without help text: {missing}"
    undocumented = [path for path, command in commands if not (command.help or command.short_help or "").strip()]
    assert not undocumented, f"commands without help: {undocumented}"


def test_stage_inputs_and_outputs_are_dvc_yamls() -> None:
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(STAGE_IO) == list(STAGES)
    for stage, (inputs, outputs) in STAGE_IO.items():
        deps = {d for d in dvc[stage].get("deps", []) if not d.startswith("src/")}
        assert deps == {str(p) for p in inputs}, stage
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in dvc[stage].get("outs", [])]
        assert all(any(Path(o).is_relative_to(p) for p in outputs) for o in outs), stage


def _in(tmp: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> Any:
    monkeypatch.chdir(tmp)
    shutil.copy(ROOT / "params.yaml", tmp / "params.yaml")
    return CliRunner().invoke(app, list(args))


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _in(tmp_path, monkeypatch, "run", "--dry-run", "--to", "split")
    assert result.exit_code == 0, result.output
    out = result.output
    listed = re.findall(r"^\d+\. (\w+)$", out, re.M)
    assert listed == ["generate", "filter", "split"]
    assert "data/trajectories (written by generate in this run)" in out
    assert "writes: data/steps/sft, data/steps/rl" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing was run or written


def test_from_refuses_a_missing_input_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data/steps/sft").mkdir(parents=True)
    result = _in(tmp_path, monkeypatch, "run", "--from", "sft")
    assert result.exit_code == 2
    out = " ".join(result.output.split())
    assert "reports/validate is missing: sft reads it and validate writes it" in out
    assert "data/steps/rl is missing: rl reads it and split writes it" in out
    assert "data/steps/sft is missing" not in out  # it exists
    assert not (tmp_path / "reports").exists() and not (tmp_path / "models").exists()
    dry = _in(tmp_path, monkeypatch, "run", "--from", "sft", "--dry-run")
    assert dry.exit_code == 2 and "reports/validate (MISSING)" in dry.output and "data/steps/sft (exists)" in dry.output


def test_from_after_to_and_unknown_stages_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    after = _in(tmp_path, monkeypatch, "run", "--from", "rl", "--to", "sft", "--dry-run")
    assert after.exit_code == 2 and "--from rl comes after --to sft" in " ".join(after.output.split())
    unknown = _in(tmp_path, monkeypatch, "run", "--from", "train")
    assert unknown.exit_code == 2 and "'train' is not a stage" in unknown.output


@pytest.mark.xdist_group("subprocess-heavy")
def test_a_partial_run_records_only_its_stages_and_says_what_each_did(tiny_run, tmp_path: Path) -> None:
    src, _ = tiny_run
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    (run_dir / Layout.run_stats).unlink()
    exe = [
        sys.executable,
        "-m",
        "editthinker.cli",
        "run",
        "--params",
        "params.yaml",
        "--from",
        "filter",
        "--to",
        "split",
    ]
    done = subprocess.run(exe, cwd=run_dir, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    stats = json.loads((run_dir / Layout.run_stats).read_text())
    assert [s["stage"] for s in stats["stages"]] == ["filter", "split"]
    log = " ".join(done.stderr.split())
    filtered, sft, rl = (read_manifest(run_dir / p) for p in (Layout.filtered, Layout.sft_data, Layout.rl_data))
    assert f"filter done: kept {filtered['kept']} of {filtered['kept'] + filtered['dropped']} trajectories" in log
    assert f"split done: {sft['rows']} SFT / {rl['rows']} RL step samples from" in log
    assert "-> data/steps/sft, data/steps/rl" in log and "{}" not in log
    page = (run_dir / Layout.report).read_text()
    assert "not run in this run" in section(page, "timings")  # generate ran earlier, not in this run
    assert f"reports: {Layout.report}" in done.stdout


@pytest.mark.xdist_group("subprocess-heavy")
def test_a_failed_stage_stops_the_run_and_the_report_shows_it(tiny_run, tmp_path: Path) -> None:
    src, _ = tiny_run
    run_dir = tmp_path / "run"
    shutil.copytree(src, run_dir)
    shard = sorted((run_dir / Layout.trajectories).glob("part-*.parquet"))[0]
    shard.unlink()  # the manifest names a shard that is gone: filter cannot read its input
    exe = [sys.executable, "-m", "editthinker.cli", "run", "--params", "params.yaml", "--from", "filter"]
    done = subprocess.run(exe, cwd=run_dir, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "stage filter failed (exit 1); later stages not run" in " ".join(done.stderr.split())
    stats = json.loads((run_dir / Layout.run_stats).read_text())
    assert [(s["stage"], s["exit_code"]) for s in stats["stages"]] == [("filter", 1)]
    page = (run_dir / Layout.report).read_text()
    assert "failed (exit 1)" in section(page, "timings") and "(failed: filter)" in section(page, "overview")


# ------------------------------------------------------------------------------------------------- summaries


def test_stage_summaries_say_what_was_done(tiny_run) -> None:
    _, results = tiny_run
    gen, filt, split = results["generate"], results["filter"], results["split"]
    line = describe("generate", gen, [Layout.trajectories])
    assert (
        line == f"generate done: 12 trajectories, {gen['rows']} turns over editors mover, painter -> data/trajectories"
    )
    assert f"kept {filt['kept']} of 12 trajectories ({filt['dropped']} dropped)" in describe("filter", filt)
    line = describe("split", split, [Layout.sft_data, Layout.rl_data])
    assert line.startswith(f"split done: {split['sft']['rows']} SFT / {split['rl']['rows']} RL step samples from ")
    unrolled = split["sft"]["unbalanced_rows"] + split["rl"]["unbalanced_rows"]
    dropped = unrolled - split["sft"]["rows"] - split["rl"]["rows"]
    assert f"{dropped} of {unrolled} dropped by balancing" in line
    assert describe("sft", {"steps": 6, "samples": 29, "wall_seconds": 1.5, "loss_curve": [6.47, 4.68]}) == (
        "sft done: 6 optimizer steps on 29 samples in 1.5 s, loss 6.47 -> 4.68"
    )
    record = {"version": "v0002", "registered_new": True, "promoted": False, "reason": "r", "champion": "v0001"}
    assert describe("promote", record) == "promote done: v0002 registered, not promoted: r; champion stays v0001"
    assert describe("something-new", {"a": 1, "nested": {"b": 2}}) == "something-new done: a=1"


def test_split_counts_the_trajectories_it_unrolled(tiny_run) -> None:
    root, results = tiny_run
    split = results["split"]
    ids = {
        r["trajectory_id"] for p in (Layout.sft_data, Layout.rl_data) for r in iter_rows(root / p, ["trajectory_id"])
    }
    assert len(ids) <= split["trajectories"] <= read_manifest(root / Layout.filtered)["kept"]
    rl_ids = {r["trajectory_id"] for r in iter_rows(root / Layout.rl_data, ["trajectory_id"])}
    assert len(rl_ids) <= split["rl_trajectories"]


def test_evaluate_shows_progress_over_every_episode_and_writes_the_same_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from editthinker.stages import evaluate

    params = parse_params(TINY)
    quiet = run_evaluate_with_expert_thinkers(params, tmp_path / "quiet", monkeypatch)
    bars: list[Any] = []
    sink = io.StringIO()

    class Recorded(evaluate.tqdm):  # type: ignore[misc,name-defined]
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **{**k, "disable": False, "file": sink})
            self.postfixes: list[str] = []
            self.updates: list[int] = []
            bars.append(self)

        def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
            self.postfixes.append(s)
            super().set_postfix_str(s, refresh)

        def update(self, n: float | None = 1) -> bool | None:
            self.updates.append(int(n or 0))
            return super().update(n)

    monkeypatch.setattr(evaluate, "tqdm", Recorded)
    shown = run_evaluate_with_expert_thinkers(params, tmp_path / "shown", monkeypatch)
    (bar,) = bars
    systems, editors = len(shown["systems"]), len(params.editors)
    assert bar.total == systems * editors * params.evaluate.num_tasks == sum(bar.updates) == bar.n
    assert len(bar.updates) == systems * editors
    assert "editor+rl / mover, turn 2" in bar.postfixes
    assert "evaluate" in sink.getvalue() and "episode" in sink.getvalue()
    for name in ("summary.json", "summary.md", "metrics.json", "score_by_turn.json", "score_by_turn.png"):
        assert (tmp_path / "quiet" / name).read_bytes() == (tmp_path / "shown" / name).read_bytes(), name
    line = describe("evaluate", quiet, [Layout.evaluation])
    n = quiet["systems"]["editor"]["all"]["n"]
    assert line.startswith(f"evaluate done: {n} episodes ({params.evaluate.num_tasks} tasks x {editors} editors)")
    for system, by_editor in quiet["systems"].items():
        assert f"{system} {100 * by_editor['all']['success_rate']:.1f}%" in line


# ------------------------------------------------------------------------------------------------- the report


def test_report_of_a_data_only_run(tiny_run, tmp_path: Path) -> None:
    root, results = tiny_run
    out = tmp_path / "run.html"
    summary = write_report(out, sources(root), max_trajectories=50)
    page = out.read_text()
    parsed = Page(page)
    assert parsed.headings == SECTION_HEADINGS
    assert "not run: validation, training, evaluation" in summary and "12 trajectories in the browser" in summary
    for anchor in ("validation", "training", "evaluation"):
        assert 'class="notrun">not run' in section(page, anchor)
    for anchor in ("timings", "funnel", "scores", "trajectories", "lineage"):
        assert 'class="notrun"' not in section(page, anchor) and 'class="error"' not in section(page, anchor)
    # the browser: every trajectory, every turn's image (+ its source), the filter's verdict per trajectory
    turns = list(iter_rows(root / Layout.trajectories, ["trajectory_id", "turn", "instruction"]))
    ids = sorted({r["trajectory_id"] for r in turns})
    assert [c["data-outcome"] for c in parsed.cards].count("kept") == results["filter"]["kept"]
    assert sorted(c["data-text"].split()[0] for c in parsed.cards) == ids
    assert parsed.images == len(turns) + len(ids)
    browser = section(page, "trajectories")
    assert browser.count("kept by filter") == results["filter"]["rows"]
    assert "Showing all 12 trajectories" in browser
    funnel = section(page, "funnel")
    assert f"{results['split']['sft']['rows']:,} samples (" in funnel and "12 trajectories" in funnel
    assert section(page, "scores").count("<svg") == 3
    # self-contained: every link is an in-page anchor or a data: URI
    assert parsed.links and all(x.startswith(("#", "data:image/png;base64,")) for x in parsed.links)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    assert "@import" not in page and "url(" not in page


def test_report_samples_the_browser_and_says_so(tiny_run, tmp_path: Path) -> None:
    root, _ = tiny_run
    pages = {}
    for seed in (0, 1):
        write_report(tmp_path / f"s{seed}.html", sources(root), max_trajectories=3, seed=seed)
        pages[seed] = (tmp_path / f"s{seed}.html").read_text()
    cards = {seed: [c["data-text"].split()[0] for c in Page(p).cards] for seed, p in pages.items()}
    assert len(cards[0]) == 3 and cards[0] == sorted(cards[0])
    assert "3 of 12 trajectories (a sample drawn with seed 0" in pages[0]
    write_report(tmp_path / "again.html", sources(root), max_trajectories=3, seed=0)
    assert (tmp_path / "again.html").read_text() == pages[0]  # same inputs, same bytes
    assert cards[1] != cards[0] and len(cards[1]) == 3  # another seed, another sample


def test_report_escapes_text_from_the_data(tiny_run, tmp_path: Path) -> None:
    root, _ = tiny_run
    run_dir = tmp_path / "run"
    shutil.copytree(root, run_dir)
    rows = list(iter_rows(run_dir / Layout.trajectories))
    evil = '<script>alert(1)</script> "quoted" see https://example.com/x'
    rows[0]["instruction"] = evil
    manifest = read_manifest(run_dir / Layout.trajectories)
    extra = {k: v for k, v in manifest.items() if k not in ("rows", "files", "dataset_sha256", "schema")}
    write_dataset(run_dir / Layout.trajectories, rows, TRAJECTORY_SCHEMA, len(rows), extra)
    write_report(tmp_path / "r.html", sources(run_dir))
    page = (tmp_path / "r.html").read_text()
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &quot;quoted&quot; see https://example.com/x" in page
    assert page.count("<script>") == 1  # the page's own filter script
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*https?:""", page)


def test_report_shows_the_evaluation_and_survives_an_unreadable_part(
    tiny_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = tiny_run
    summary = with_evaluation(root, tmp_path / "run", monkeypatch)
    src = sources(tmp_path / "run")
    write_report(tmp_path / "r.html", src)
    page = (tmp_path / "r.html").read_text()
    evaluation = section(page, "evaluation")
    for system, by_editor in summary["systems"].items():
        for editor, m in by_editor.items():
            lo, hi = m["success_ci95"]
            cells = (
                f"<td>{editor}</td><td>{m['n']}</td><td>{100 * m['success_rate']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"
            )
            assert cells in evaluation, (system, editor)
    for name, c in summary.get("paired", {}).items():  # the paired comparisons, where evaluate writes them
        assert f"<td>{name}</td><td>{100 * c['success_rate']['mean']:+.1f} [" in evaluation
    plot = png_uri((src.evaluation / "score_by_turn.png").read_bytes(), max_px=2000)
    assert plot and f'src="{plot}"' in evaluation
    assert evaluation.count("<svg") == 1  # success rates with their intervals
    (src.evaluation / "summary.json").write_text("{not json")
    write_report(tmp_path / "broken.html", src)
    broken = (tmp_path / "broken.html").read_text()
    assert "could not read this part of the run: JSONDecodeError" in section(broken, "evaluation")
    assert 'class="error"' not in section(broken, "trajectories") and Page(broken).headings == SECTION_HEADINGS


def test_report_command_and_thumbnails(tiny_run, tmp_path: Path) -> None:
    root, _ = tiny_run
    out = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", "--root", str(root), "--out", str(out), "-n", "2"])
    assert result.exit_code == 0, result.output
    assert "report done:" in result.output and "2 trajectories in the browser" in result.output
    assert len(Page(out.read_text()).cards) == 2
    from PIL import Image

    big = Image.new("RGB", (1024, 512), (200, 30, 30))
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    uri = png_uri(buf.getvalue())
    assert uri is not None
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as thumb:
        assert thumb.size == (256, 128)
    assert png_uri(b"not a png") is None


# ------------------------------------------------------------------------------------------------- Chromium


def test_report_renders_in_headless_chromium(tiny_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        reason = "chromium is not installed (apt-get install chromium); the report was not rendered in a browser"
        print(reason)
        pytest.skip(reason)
    root, _ = tiny_run
    with_evaluation(root, tmp_path / "run", monkeypatch)
    page = tmp_path / "run.html"
    write_report(page, sources(tmp_path / "run"))
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    shot = tmp_path / "shot.png"
    subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", "--window-size=1200,900", page.as_uri()],
        capture_output=True,
        timeout=180,
        check=True,
    )
    from PIL import Image, ImageStat

    with Image.open(shot) as im:
        assert im.size == (1200, 900)
        spread = ImageStat.Stat(im.convert("L")).stddev[0]
    assert spread > 10, f"the screenshot looks blank (pixel stddev {spread:.1f})"
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180, check=True
    ).stdout
    assert Page(dom).headings == SECTION_HEADINGS
    cards = len(Page(dom).cards)
    assert cards == 12 and f"{cards} of {cards} shown" in dom  # the browser's script ran
