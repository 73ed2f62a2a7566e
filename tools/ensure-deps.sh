#!/bin/sh
# ensure-deps.sh: checks that the Debian packages tally builds on are installed. As root it
# installs the missing ones with apt-get; otherwise it prints the exact command and fails.
set -eu
pkgs="build-essential cmake pkg-config clang liburing-dev libxxhash-dev liblz4-dev libck-dev libjansson-dev"
pkgs="$pkgs ${TALLY_EXTRA_PKGS:-}"
missing=""
for p in $pkgs; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing="$missing $p"
  fi
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
  echo "ensure-deps: installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing
else
  echo "ensure-deps: missing Debian packages:$missing" >&2
  echo "run as root:  apt-get install -y$missing" >&2
  exit 1
fi
