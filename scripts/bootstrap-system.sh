#!/usr/bin/env bash
# Installs the Debian packages meshbox's tests and demo use, when missing.
# Needs root (apt-get). Without root it prints what is missing and carries on,
# so unprivileged users can still run the tests that do not need these tools.
set -euo pipefail

packages=(python3 python3-venv python3-dev gcc libc6-dev libssl-dev iptables iproute2 curl procps util-linux nginx-light nghttp2-client wrk podman runc debootstrap shellcheck prometheus socat chromium chromium-driver tcpdump)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "bootstrap: not root, cannot install: ${missing[*]} (tests that need them will skip)" >&2
  exit 0
fi
echo "bootstrap: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
