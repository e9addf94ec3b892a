#!/usr/bin/env bash
# Makes meshbox's offline base images where no image registry is reachable:
#   localhost/meshbox-base:bookworm           minimal Debian 12 + python3 + venv
#   localhost/meshbox-base-iptables:bookworm  the same + iptables (for the init image)
# The root filesystems come from debootstrap (Debian's package mirror only) and are cached as
# tarballs under .cache/images/, so later runs only `import` them; images already in the
# engine's store are kept. Needs root (debootstrap, chroot).
# Usage: local-base.sh ENGINE   (podman or docker)
set -euo pipefail

engine=${1:?usage: local-base.sh podman|docker}
repo=$(cd "$(dirname "$0")/../.." && pwd)
cache="$repo/.cache/images"
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
mkdir -p "$cache"

have_image() { "$engine" image inspect "$1" >/dev/null 2>&1; }

make_tarballs() {
  command -v debootstrap >/dev/null || { echo "local-base: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
  [ "$(id -u)" -eq 0 ] || { echo "local-base: debootstrap needs root" >&2; exit 1; }
  local root
  root=$(mktemp -d "$cache/rootfs.XXXXXX")
  # shellcheck disable=SC2064  # expand $root now: it is the directory to remove
  trap "rm -rf '$root'" EXIT
  echo "local-base: debootstrap bookworm (python3) into $root" >&2
  debootstrap --variant=minbase --include=python3,python3-venv bookworm "$root" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || { echo "local-base: debootstrap failed, see $cache/debootstrap.log" >&2; exit 1; }
  trim "$root"
  tar -C "$root" -cf "$cache/base-bookworm.tar.tmp" . && mv "$cache/base-bookworm.tar.tmp" "$cache/base-bookworm.tar"
  echo "local-base: adding iptables" >&2
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  chroot "$root" apt-get update -q >>"$cache/debootstrap.log" 2>&1
  DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y -q --no-install-recommends iptables \
    >>"$cache/debootstrap.log" 2>&1 || { echo "local-base: iptables install failed, see $cache/debootstrap.log" >&2; exit 1; }
  : >"$root/etc/resolv.conf"
  trim "$root"
  tar -C "$root" -cf "$cache/base-bookworm-iptables.tar.tmp" . \
    && mv "$cache/base-bookworm-iptables.tar.tmp" "$cache/base-bookworm-iptables.tar"
  rm -rf "$root"
  trap - EXIT
}

# Package caches, docs and translations are not needed at run time.
trim() {
  rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/cache/apt/*.bin "$1"/var/lib/apt/lists/* "$1"/usr/share/doc/* \
    "$1"/usr/share/man/* "$1"/usr/share/locale/* "$1"/usr/share/info/*
}

# Images already in the engine's store are reused as they are (a fresh clone has no .cache/,
# but the host's image store outlives it); tarballs are made only when an image is missing.
for name in base base-iptables; do
  image="localhost/meshbox-$name:bookworm"
  tarball="$cache/${name/base/base-bookworm}.tar"
  have_image "$image" && continue
  [ -f "$tarball" ] || make_tarballs
  echo "local-base: importing $tarball as $image" >&2
  "$engine" import --change 'CMD ["/bin/bash"]' "$tarball" "$image" >/dev/null
done
