#!/usr/bin/env bash
# Build the factory's container images; called by `make images`.
#
#   docker/build.sh                        both images (cpu, cuda)
#   IMAGES=cpu docker/build.sh             one of them
#   BASE_IMAGE=localhost/editthinker-base:py311 IMAGES=cpu docker/build.sh   a local base (docker/local-base.sh)
#   ENGINE=podman docker/build.sh          force the engine (default: docker if its daemon answers, else podman)
#   BUILD_ARGS="--network=host" ...        extra arguments for the engine's build
#
# Tags: editthinker-factory:<flavour>-<version> and the alias editthinker-factory:<flavour>, where <version> is
# `git describe --always --dirty` (or the package version when there is no git checkout).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
IMAGES="${IMAGES:-cpu cuda}"
NAME="${IMAGE_NAME:-editthinker-factory}"

die() { echo "docker/build.sh: $*" >&2; exit 1; }

if [ -z "${ENGINE:-}" ]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    ENGINE=docker
  elif command -v podman >/dev/null 2>&1; then
    ENGINE=podman
  else
    die "no container engine: docker's daemon does not answer and podman is not installed (apt-get install podman)"
  fi
fi
command -v "$ENGINE" >/dev/null 2>&1 || die "$ENGINE is not installed"

VERSION="$(git describe --always --dirty 2>/dev/null || true)"
if [ -z "$VERSION" ]; then
  VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n1)"
fi
[ -n "$VERSION" ] || die "cannot tell the version (no git, no version in pyproject.toml)"

for flavour in $IMAGES; do
  case "$flavour" in
    cpu|cuda) ;;
    *) die "unknown image '$flavour' (IMAGES may name cpu and cuda)" ;;
  esac
  args=(build -f "docker/Dockerfile.$flavour" -t "$NAME:$flavour-$VERSION" -t "$NAME:$flavour")
  if [ -n "${BASE_IMAGE:-}" ]; then
    args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
  fi
  # shellcheck disable=SC2206  # BUILD_ARGS is split on purpose
  extra=(${BUILD_ARGS:-})
  echo "docker/build.sh: $ENGINE ${args[*]} ${extra[*]} ."
  start=$(date +%s)
  "$ENGINE" "${args[@]}" "${extra[@]}" .
  echo "docker/build.sh: built $NAME:$flavour-$VERSION (alias $NAME:$flavour) in $(( $(date +%s) - start )) s"
done
