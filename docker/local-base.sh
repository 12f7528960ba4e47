#!/usr/bin/env bash
# Build a *local* base image for docker/Dockerfile.cpu where no image registry can be reached.
#
#   docker/local-base.sh [TAG]     (default TAG: localhost/editthinker-base:py311-<sha256 of requirements.lock>)
#   BASE_IMAGE=<that TAG> IMAGES=cpu ENGINE=podman BUILD_ARGS=--network=host docker/build.sh
#
# It makes a Debian bookworm root filesystem with debootstrap (Debian mirrors only; Python 3.11 from Debian),
# copies this checkout's installed dependencies (.venv, built by `make setup` from requirements.lock, CPU torch)
# into the system site-packages, and `podman import`s it. The Dockerfile's `pip install -r requirements.lock`
# then finds every pin already satisfied and needs no network, so the image build is offline.
# Used by tests/test_images.py; needs root, podman and debootstrap (apt-get install podman debootstrap).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TAG="${1:-localhost/editthinker-base:py311-$(sha256sum "$ROOT/requirements.lock" | cut -c1-12)}"
CACHE="${EDITTHINKER_BASE_CACHE:-/var/tmp/editthinker-base}"
VENV="${VENV:-$ROOT/.venv}"
SUITE="${DEBIAN_SUITE:-bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ENGINE="${ENGINE:-podman}"

die() { echo "local-base.sh: $*" >&2; exit 1; }
command -v "$ENGINE" >/dev/null || die "$ENGINE is not installed"
command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
[ "$(id -u)" = 0 ] || die "debootstrap needs root"
SITE="$(ls -d "$VENV"/lib/python3.11/site-packages 2>/dev/null)" || die "no $VENV with Python 3.11: run make setup"

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9  # one build of the base at a time
if "$ENGINE" image exists "$TAG" 2>/dev/null; then
  echo "local-base.sh: $TAG already exists"
  exit 0
fi

RFS="$CACHE/rootfs"
if [ ! -e "$CACHE/.debootstrap-done" ]; then
  rm -rf "$RFS"
  debootstrap --variant=minbase --include=python3,python3-pip,python-is-python3,ca-certificates \
    "$SUITE" "$RFS" "$MIRROR"
  touch "$CACHE/.debootstrap-done"
fi

# Dependencies from the lock, as installed here; not the project itself (the Dockerfile installs it, --no-deps).
DEST="$RFS/usr/local/lib/python3.11/dist-packages"
rm -rf "$DEST" && mkdir -p "$DEST"
tar -C "$SITE" --exclude='__editable__*' --exclude='editthinker_factory*' --exclude='__pycache__' \
  -cf - . | tar -C "$DEST" -xf -
rm -f "$RFS"/usr/lib/python3.11/EXTERNALLY-MANAGED  # a throwaway base image, pip may install system-wide
# Trust what this machine trusts (its package-registry access may go through a local CA), for pip too: the
# image build fetches only the project's build backend (setuptools, pip's isolated build).
cp /etc/ssl/certs/ca-certificates.crt "$RFS"/etc/ssl/certs/ca-certificates.crt
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$RFS"/etc/pip.conf
rm -rf "$RFS"/var/cache/apt/archives/*.deb "$RFS"/var/lib/apt/lists/*

tar -C "$RFS" -cf - . | "$ENGINE" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  - "$TAG"
echo "local-base.sh: imported $TAG"
# bases of older locks are stale (each is ~2 GB): drop their tags
"$ENGINE" images --format '{{.Repository}}:{{.Tag}}' | grep "^${TAG%:*}:py311-" | grep -vxF "$TAG" \
  | xargs -r "$ENGINE" rmi -f >/dev/null || true
