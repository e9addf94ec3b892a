#!/usr/bin/env bash
# Builds meshbox's container images: <hub>/init, <hub>/proxy and <hub>/control-plane, tagged <tag>.
#
# Wheels of the components and their dependencies are built on the host (pip, PyPI) into
# .cache/images/wheels; each image installs only what its component needs from there with
# `pip --no-index` in a `--network none` build.
#
# Usage: deploy/images/build.sh [--local-base] [--engine podman|docker] [--hub HUB] [--tag TAG]
#   --local-base  build on a Debian base made here by debootstrap (local-base.sh) instead of
#                 python:3.11-slim: for hosts that reach no image registry.
# Environment: PYTHON (default .venv/bin/python), BASE_IMAGE (overrides the base image).
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
here="$repo/deploy/images"
python=${PYTHON:-$repo/.venv/bin/python}
hub=docker.io/meshbox
tag=0.1.0
engine=
local_base=0

while [ $# -gt 0 ]; do
  case "$1" in
    --local-base) local_base=1 ;;
    --engine) engine=${2:?--engine needs podman or docker}; shift ;;
    --hub) hub=${2:?--hub needs a value}; shift ;;
    --tag) tag=${2:?--tag needs a value}; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ -z "$engine" ]; then
  if command -v podman >/dev/null; then
    engine=podman
  elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    engine=docker
  else
    echo "build.sh: needs podman or a running docker (apt-get install podman runc)" >&2
    exit 1
  fi
fi
if [ "$engine" = podman ]; then
  # runc and raised ulimits (see containers.conf); the host's own config stays untouched.
  export CONTAINERS_CONF="$here/containers.conf"
fi

wheels="$repo/.cache/images/wheels"
mkdir -p "$wheels"
# Stale builds of our own packages would shadow new ones with the same version.
rm -f "$wheels"/meshbox_*.whl
# Build from a clean copy of the sources: setuptools' build/ leftovers (and the proxy's in-place
# compiled modules) in the work tree could otherwise put stale code into a wheel.
sources=$(mktemp -d)
trap 'rm -rf "$sources"' EXIT
dists=(protos init proxy agent discovery injector)
tar -C "$repo" --exclude=build --exclude='*.egg-info' --exclude=tests --exclude=__pycache__ --exclude='*.so' -cf - "${dists[@]}" \
  | tar -C "$sources" -xf -
echo "build.sh: building wheels into $wheels" >&2
# Offline first, from the wheels of earlier runs (fast); the package index only when one is missing.
if ! "$python" -m pip wheel -q --disable-pip-version-check --no-index --find-links "$wheels" \
    --no-build-isolation --wheel-dir "$wheels" "${dists[@]/#/$sources/}" 2>/dev/null; then
  "$python" -m pip wheel -q --disable-pip-version-check --find-links "$wheels" --wheel-dir "$wheels" \
    "${dists[@]/#/$sources/}"
fi

base=${BASE_IMAGE:-python:3.11-slim}
init_base=$base
if [ "$local_base" = 1 ] && [ -z "${BASE_IMAGE:-}" ]; then
  "$here/local-base.sh" "$engine"
  base=localhost/meshbox-base:bookworm
  init_base=localhost/meshbox-base-iptables:bookworm
fi

for component in init proxy control-plane; do
  from=$base
  [ "$component" = init ] && from=$init_base
  image="$hub/$component:$tag"
  echo "build.sh: $image (from $from)" >&2
  # --no-cache: the cache key of a RUN does not cover its bind-mounted wheels.
  "$engine" build -q --no-cache --network none --build-arg "BASE_IMAGE=$from" \
    -f "$here/$component/Containerfile" -t "$image" "$wheels" >/dev/null
done
echo "build.sh: built $hub/{init,proxy,control-plane}:$tag with $engine" >&2
