# Every target sets up the environment first (pinned dependencies from requirements.lock, CPU torch).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha256sum | cut -c1-12)
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test lint bench seeds pipeline images clean

setup: $(STAMP)

# torch comes first through pip (it takes the CPU wheel on disk where there is one); uv then installs the
# exact lock in seconds, and finds torch already satisfied.
$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check torch==2.13.0 uv==0.13.9
	$(VENV)/bin/uv pip install --quiet --python $(PY) -r requirements.lock
	$(VENV)/bin/uv pip install --quiet --python $(PY) --no-deps -e .
	rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP)  ## the whole factory on the embedded default
	$(VENV)/bin/editthinker run --params params.yaml

test: $(STAMP)  ## the test suite
	$(PY) -m pytest -n 2 --dist loadgroup -q

lint: $(STAMP)  ## ruff and a type check of src/
	$(VENV)/bin/ruff check src tests components pipelines bench
	$(VENV)/bin/ruff format --check src tests components pipelines bench
	$(VENV)/bin/mypy src

bench: $(STAMP)  ## throughput, training speed, demo wall time and peak memory per stage, then `seeds` (BENCH_ARGS=--quick: smoke)
	$(PY) bench/bench.py $(BENCH_ARGS)
	$(PY) bench/seeds.py $(BENCH_ARGS)

seeds: $(STAMP)  ## the held-out figures over 3 training seeds x 2 world seeds: reports/seeds.md (README's table)
	$(PY) bench/seeds.py

pipeline: $(STAMP)  ## compile the KFP pipelines to YAML
	$(VENV)/bin/editthinker pipeline compile --params params.yaml --out build/pipelines

images:  ## container images (docker/build.sh): IMAGES=cpu|cuda, BASE_IMAGE=..., ENGINE=docker|podman
	IMAGES="$(or $(IMAGES),cpu cuda)" bash docker/build.sh

clean:  ## generated data, checkpoints and registry (reports/ is tracked by git: `git checkout reports` restores it)
	rm -rf data models registry build .dvc/tmp reports/run_stats.json reports/run.html
