#!/usr/bin/env bash
# Install what kpipe needs on Debian 12 (run as root, or with sudo available):
#   ./setup.sh          system packages + .venv with the pipeline
#   ./setup.sh --test   the same, plus what the tests need (Chromium, pytest, linters)
# With KPIPE_LAVA=1, --test also installs and starts a local LAVA on 127.0.0.1 (vm-templates/lava/
# lava-local.sh: postgres, apache on 127.0.0.1:80, the LAVA daemons) for the LAVA runtime's end-to-end
# test; CI does. It goes first: while it installs, its policy-rc.d holds back every daemon's start.
set -euo pipefail
cd "$(dirname "$0")"
with_tests=0
[ "${1:-}" = "--test" ] && with_tests=1

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
lava=0
[ "$with_tests" = 1 ] && [ "${KPIPE_LAVA:-0}" = 1 ] && lava=1
[ "$lava" = 1 ] && $SUDO vm-templates/lava/lava-local.sh install

packages=(
  git make gcc libc6-dev flex bison bc cpio xz-utils kmod libelf-dev libssl-dev ccache
  qemu-system-x86 busybox-static dropbear-bin openssh-sftp-server openssh-client
  linux-source-6.1 python3 python3-venv python3-pip bubblewrap util-linux rsync
)
# Tests also start real sshd and distccd daemons on 127.0.0.1 as pool hosts.
[ "$with_tests" = 1 ] && packages+=(chromium chromium-driver openssh-server distcc)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Builds of patches run confined (bubblewrap) as this unprivileged user when kpipe runs as root.
if ! getent passwd kpipe-build >/dev/null; then
  echo "setup: adding the system user kpipe-build (confined kernel builds)"
  $SUDO useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin kpipe-build
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
extra=""
[ "$with_tests" = 1 ] && extra="[test]"
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extra}"
[ "$lava" = 1 ] && $SUDO vm-templates/lava/lava-local.sh start
echo "setup: done (.venv ready)"
