"""Container images (docker/) and multi-GPU launcher configs (configs/).

Static checks always run. The build test needs podman (and root, debootstrap): it builds the CPU image from a
local base (docker/local-base.sh, no image registry needed), runs a stage in it with the CLI and the project's
KFP `generate` component through kfp.local's DockerRunner on podman's Docker API, and checks both give the
dataset the CLI gives here, byte for byte; without podman it skips, and
in CI (CI=true) it skips unless EDITTHINKER_PODMAN_TEST=1.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile.cpu", "cuda": DOCKER / "Dockerfile.cuda"}
CONFIGS = ROOT / "configs" / "accelerate"
SECRET_NAME = re.compile(r"(?:^|_)(KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIALS?|ACCESS_KEY_ID)(?:_|$)", re.I)


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def _arg_defaults(instrs: list[tuple[str, str]]) -> dict[str, str]:
    defaults = {}
    for word, rest in instrs:
        if word == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            defaults[name.strip()] = value.strip().strip('"')
    return defaults


def _base_images(path: Path) -> list[str]:
    """The external images each FROM names, ARG defaults substituted; earlier stage names are not images."""
    instrs = _instructions(path)
    defaults = _arg_defaults(instrs)
    stages: set[str] = set()
    images = []
    for word, rest in instrs:
        if word != "FROM":
            continue
        parts = [p for p in rest.split() if not p.startswith("--")]
        ref = re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), m.group(0)), parts[0])
        if len(parts) >= 3 and parts[1].upper() == "AS":
            stages.add(parts[2])
        if parts[0] not in stages:
            images.append(ref)
    return images


def _lock_pin(name: str) -> str:
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.lower().startswith(f"{name}=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{name} is not pinned in requirements.lock")


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_base_images_are_pinned_to_exact_tags(flavour: str) -> None:
    images = _base_images(DOCKERFILES[flavour])
    assert images, "no FROM"
    for ref in images:
        assert "$" not in ref, f"{ref}: every base image needs an ARG default"
        name, _, digest = ref.partition("@")
        last = name.rsplit("/", 1)[-1]
        assert ":" in last, f"{ref}: bare image name, pin an exact tag"
        tag = last.split(":", 1)[1]
        assert tag != "latest", f"{ref}: 'latest' is not a pin"
        assert re.search(r"\d+\.\d+\.\d+", tag), f"{ref}: tag {tag!r} is not an exact version"
        if digest:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{ref}: malformed digest"
    main_base = images[-1]
    if flavour == "cpu":
        assert re.search(r"python:3\.11\.\d+-slim-bookworm$", main_base), main_base
    else:
        assert re.search(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu22\.04$", main_base), main_base
    # a local base can be substituted, and the digest policy is written down where the tag is
    text = DOCKERFILES[flavour].read_text()
    assert re.search(r"^ARG BASE_IMAGE=", text, re.M) and "FROM ${BASE_IMAGE}" in text
    assert "digest" in text.lower()


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_dependencies_come_from_the_lock_and_the_project_without_deps(flavour: str) -> None:
    instrs = _instructions(DOCKERFILES[flavour])
    runs = " ".join(rest for word, rest in instrs if word == "RUN")
    copies = " ".join(rest for word, rest in instrs if word == "COPY")
    assert "requirements.lock" in copies
    assert re.search(r"pip install (?:--\S+ )*-r requirements\.lock", runs), "the lock is not installed"
    assert re.search(r"pip install --no-deps \.", runs), "the project must be installed with --no-deps"
    # torch is the lock's version, from the index of the wanted build (CPU wheel / CUDA wheel)
    defaults = _arg_defaults(instrs)
    assert defaults["TORCH_VERSION"] == _lock_pin("torch")
    assert 'torch==${TORCH_VERSION}"' in runs and '--index-url "${TORCH_INDEX_URL}"' in runs
    expected_index = "/whl/cpu" if flavour == "cpu" else "/whl/cu"
    assert expected_index in defaults["TORCH_INDEX_URL"]
    # the index install of torch comes before the lock, so the lock finds torch satisfied
    assert runs.index("TORCH_INDEX_URL") < runs.index("-r requirements.lock")


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_image_runs_as_non_root_without_secrets_or_entrypoint(flavour: str) -> None:
    instrs = _instructions(DOCKERFILES[flavour])
    users = [rest for word, rest in instrs if word == "USER"]
    assert users, "no USER: the image would run as root"
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert "ENTRYPOINT" not in {word for word, _ in instrs}, "KFP lightweight components need a plain shell/python"
    for word, rest in instrs:
        if word in {"ENV", "ARG"}:
            names = re.findall(r"(?:^|\s)(\w+)=", rest) or [rest.split("=")[0].split()[0]]
            for name in names:
                assert not SECRET_NAME.search(name), f"{word} {name}: secrets come from the runtime environment"
        if word in {"COPY", "ADD"}:
            assert not re.search(r"\.env\b|\.pem\b|\.key\b|credentials|\.aws|\.netrc", rest), rest
    assert not re.search(r"AKIA[0-9A-Z]{16}|sk-[A-Za-z0-9]{20,}", DOCKERFILES[flavour].read_text())


def _dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip().rstrip("/") for line in lines if line.strip() and not line.startswith("#")]


def test_dockerignore_keeps_environments_data_and_models_out() -> None:
    ignored = set(_dockerignore())
    for name in (".venv", "data", "models", "reports", "registry", ".git"):
        assert name in ignored, f".dockerignore must exclude {name}"
    assert not any(line.startswith("!") for line in ignored)
    # everything the Dockerfiles COPY exists and is not ignored
    for path in DOCKERFILES.values():
        for word, rest in _instructions(path):
            if word != "COPY" or "--from=" in rest:
                continue
            *sources, _dest = rest.split()
            for src in sources:
                assert (ROOT / src).exists(), f"{path.name}: COPY {src}: no such path"
                assert src.split("/")[0] not in ignored, f"{path.name}: COPY {src} is excluded by .dockerignore"


def _fake_engine(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A directory holding a stand-in engine that logs its arguments, and the log."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "engine.log"
    script = bindir / name
    script.write_text(f'#!/bin/sh\n[ "$1" = info ] && exit 1\necho "$@" >> {log}\n')
    script.chmod(0o755)
    for tool in ("bash", "sh", "git", "sed", "head", "dirname", "date", "cat"):
        found = shutil.which(tool)
        if found and not (bindir / tool).exists():
            (bindir / tool).symlink_to(found)
    return bindir, log


def test_build_script_tags_both_images_with_the_version_and_aliases(tmp_path: Path) -> None:
    bindir, log = _fake_engine(tmp_path, "podman")
    env = {"PATH": str(bindir), "HOME": str(tmp_path), "BASE_IMAGE": "localhost/base:1.0.0"}
    proc = subprocess.run(
        ["bash", str(DOCKER / "build.sh")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    version = (
        subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        or re.findall(r'^version = "(.+)"', (ROOT / "pyproject.toml").read_text(), re.M)[0]
    )
    calls = log.read_text().splitlines()
    assert len(calls) == 2
    for flavour, call in zip(("cpu", "cuda"), calls, strict=True):
        args = call.split()
        assert args[0] == "build" and f"docker/Dockerfile.{flavour}" in args
        assert f"editthinker-factory:{flavour}" in args
        tags = [a for a in args if a.startswith(f"editthinker-factory:{flavour}-")]
        assert tags and tags[0].endswith(version), (tags, version)
        assert "BASE_IMAGE=localhost/base:1.0.0" in args


def test_build_script_says_clearly_when_there_is_no_engine(tmp_path: Path) -> None:
    bindir, _ = _fake_engine(tmp_path, "docker")  # a docker client whose daemon does not answer; no podman
    env = {"PATH": str(bindir), "HOME": str(tmp_path), "IMAGES": "cpu"}
    proc = subprocess.run(
        ["bash", str(DOCKER / "build.sh")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert "no container engine" in proc.stderr and "podman" in proc.stderr
    proc = subprocess.run(
        ["bash", str(DOCKER / "build.sh")],
        cwd=ROOT,
        env={**env, "ENGINE": "podman", "IMAGES": "gpu"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "not installed" in proc.stderr


def test_makefile_images_target_calls_the_build_script() -> None:
    text = (ROOT / "Makefile").read_text()
    assert re.search(r"^\.PHONY:.*\bimages\b", text, re.M)
    match = re.search(r"^images:.*\n\t(.+)$", text, re.M)
    assert match and "docker/build.sh" in match.group(1)


# ---------------------------------------------------------------------------------------------- configs


def _config(name: str) -> dict:
    data = yaml.safe_load((CONFIGS / name).read_text())
    assert isinstance(data, dict)
    return data


def test_zero3_config_is_deepspeed_stage_3_bf16() -> None:
    cfg = _config("zero3.yaml")
    assert cfg["distributed_type"] == "DEEPSPEED"
    assert cfg["deepspeed_config"]["zero_stage"] == 3
    assert cfg["mixed_precision"] == "bf16"
    assert cfg["use_cpu"] is False
    # global batch 32 for SFT = num_processes x per-device batch x accumulation: the per-device batch is whole
    per_process = cfg["num_processes"] * cfg["deepspeed_config"]["gradient_accumulation_steps"]
    assert 32 % per_process == 0


def test_fsdp_config_is_full_sharding_bf16() -> None:
    cfg = _config("fsdp.yaml")
    assert cfg["distributed_type"] == "FSDP"
    assert cfg["fsdp_config"]["fsdp_version"] == 2
    assert cfg["fsdp_config"]["fsdp_reshard_after_forward"] is True
    assert cfg["mixed_precision"] == "bf16"


@pytest.mark.parametrize("name", ["zero3.yaml", "fsdp.yaml"])
def test_accelerate_reads_the_config(name: str) -> None:
    config_args = pytest.importorskip("accelerate.commands.config.config_args")
    cfg = config_args.load_config_from_file(str(CONFIGS / name))  # unknown keys are an error there
    assert str(cfg.distributed_type).endswith(("DEEPSPEED", "FSDP"))


def test_configs_readme_gives_the_launch_command() -> None:
    text = (ROOT / "configs" / "README.md").read_text()
    cmd = "accelerate launch --config_file configs/accelerate/zero3.yaml -m editthinker.cli sft --params params.yaml"
    assert cmd in text
    assert 'if __name__ == "__main__"' in (ROOT / "src" / "editthinker" / "cli.py").read_text()


# ---------------------------------------------------------------------------------------------- podman build

# the local base carries the installed lock: a new lock gets a new base
BASE_TAG = (
    "localhost/editthinker-base:py311-" + hashlib.sha256((ROOT / "requirements.lock").read_bytes()).hexdigest()[:12]
)
TEST_IMAGE = "localhost/editthinker-factory-test"


def _podman_ready() -> str | None:
    """Why the podman build test cannot run here, or None."""
    if os.environ.get("CI") and os.environ.get("EDITTHINKER_PODMAN_TEST") != "1":
        return "not run in CI (CI=true), which must not depend on podman: set EDITTHINKER_PODMAN_TEST=1 to run it"
    if shutil.which("podman") is None:
        return "podman is not installed: apt-get install podman runc debootstrap to run this test"
    info = subprocess.run(["podman", "info"], capture_output=True, text=True, timeout=120)
    if info.returncode != 0:
        return f"podman is installed but cannot run here: {info.stderr.strip()[-300:]}"
    if shutil.which("debootstrap") is None:
        return "debootstrap is not installed (docker/local-base.sh makes the local base with it)"
    if os.geteuid() != 0:
        return "docker/local-base.sh needs root for debootstrap"
    if not (ROOT / ".venv" / "lib" / "python3.11" / "site-packages").is_dir():
        return "no .venv (make setup) to fill the local base from"
    return None


def _limit(which: int, most: int = 4096) -> int:
    hard = resource.getrlimit(which)[1]
    return most if hard == resource.RLIM_INFINITY else min(hard // 2, most)


@pytest.mark.slow
def test_cpu_image_builds_from_a_local_base_and_runs_a_stage(tmp_path: Path) -> None:
    reason = _podman_ready()
    if reason:
        pytest.skip(reason)
    base = subprocess.run(["bash", str(DOCKER / "local-base.sh"), BASE_TAG], capture_output=True, text=True)
    assert base.returncode == 0, base.stdout[-2000:] + base.stderr[-3000:]
    env = {
        **os.environ,
        "ENGINE": "podman",
        "IMAGES": "cpu",
        "BASE_IMAGE": BASE_TAG,
        "IMAGE_NAME": TEST_IMAGE,
        "BUILD_ARGS": "--network=host",
    }
    start = time.monotonic()
    build = subprocess.run(["bash", str(DOCKER / "build.sh")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    print(f"CPU image built from {BASE_TAG} in {time.monotonic() - start:.0f} s")
    # the lock was already satisfied by the base: pip fetched no dependency (only the isolated build backend)
    assert "Downloading torch" not in build.stdout

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        # podman's default rlimits (nofile/nproc 1M) exceed what this sandbox may set: ask for less
        limits = [
            f"--ulimit={name}={n}:{n}"
            for name, n in (("nofile", _limit(resource.RLIMIT_NOFILE)), ("nproc", _limit(resource.RLIMIT_NPROC)))
        ]
        cmd = [
            "podman",
            "run",
            "--rm",
            "--network=none",
            *limits,
            "-v",
            f"{tmp_path}:/work",
            f"{TEST_IMAGE}:cpu",
            *args,
        ]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600)

    tmp_path.chmod(0o777)  # the image's user (uid 1000) writes there
    who = run("sh", "-c", "id -u; python3 -c 'import editthinker, kfp, torch; print(torch.__version__)'")
    assert who.returncode == 0, who.stderr
    assert who.stdout.split()[0] == "1000"
    assert run("editthinker", "--help").returncode == 0

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["generate"].update({"num_tasks": 8, "max_turns": 2, "shards": 1})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    gen = run("editthinker", "generate", "--params", "params.yaml", "--out", "data/trajectories")
    assert gen.returncode == 0, gen.stdout[-2000:] + gen.stderr[-3000:]
    manifest = json.loads((tmp_path / "data" / "trajectories" / "manifest.json").read_text())
    # the image is one more driver: same params and seed, byte-identical dataset as the CLI here
    host = subprocess.run(
        [sys.executable, "-m", "editthinker.cli", "generate", "--params", "params.yaml", "--out", "host/trajectories"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert host.returncode == 0, host.stderr[-3000:]
    expected = json.loads((tmp_path / "host" / "trajectories" / "manifest.json").read_text())
    assert manifest["dataset_sha256"] == expected["dataset_sha256"]

    # and the project's real KFP component, run by kfp.local's DockerRunner against podman's Docker API
    kfp_root = tmp_path / "kfp"
    kfp_root.mkdir(mode=0o777)
    kfp_root.chmod(0o777)
    sha = _run_component_under_podman(tmp_path, kfp_root, json.dumps(params))
    assert sha == expected["dataset_sha256"]


KFP_SCRIPT = """
import copy, json, sys
from pathlib import Path
import kfp.local
from components.generate.component import generate

kfp.local.init(runner=kfp.local.DockerRunner(), pipeline_root=sys.argv[1])
component = copy.deepcopy(generate)
component.component_spec.implementation.container.image = sys.argv[2]
task = component(params_json=Path(sys.argv[3]).read_text())
manifest = json.loads((Path(task.outputs["trajectories"].path) / "manifest.json").read_text())
print("DATASET_SHA256", manifest["dataset_sha256"])
"""


def _run_component_under_podman(tmp_path: Path, kfp_root: Path, params_json: str) -> str:
    conf = tmp_path / "containers.conf"
    nofile, nproc = _limit(resource.RLIMIT_NOFILE), _limit(resource.RLIMIT_NPROC)
    conf.write_text(f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n')
    sock = tmp_path / "podman.sock"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{sock}"],
        env={**os.environ, "CONTAINERS_CONF": str(conf)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sock.exists(), "podman system service did not open its socket"
        (tmp_path / "params.json").write_text(params_json)
        env = {**os.environ, "DOCKER_HOST": f"unix://{sock}", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}
        proc = subprocess.run(
            [sys.executable, "-c", KFP_SCRIPT, str(kfp_root), f"{TEST_IMAGE}:cpu", str(tmp_path / "params.json")],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return re.findall(r"^DATASET_SHA256 (\w+)$", proc.stdout, re.M)[-1]
    finally:
        service.terminate()
        service.wait(timeout=30)
