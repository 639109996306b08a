#!/usr/bin/env bash
# README's test command: installs what the tests need and is missing, then
# runs the whole suite with cargo-nextest. Extra arguments go to nextest
# (`scripts/test.sh -p meshpeer-model`, `scripts/test.sh g11`).
#
# What it may install, only when missing:
#   cargo-nextest  (cargo install --locked; needs only Rust and crates.io)
#   iproute2       (`ip`, for the network-namespace tests; apt)
#   kubectl        (Debian's kubernetes-client, for the demo walkthrough
#                   test that edits a folder with `kubectl label --local`; apt)
# apt needs root, or sudo; without either the missing packages are named
# and the script stops before running anything.
set -euo pipefail
cd "$(dirname "$0")/.."

# An executable on the PATH (bash's `command -v` also names a file it
# cannot run).
have() {
  local p
  p=$(command -v "$1" 2>/dev/null) && [ -x "$p" ]
}

pkgs=()
have ip || pkgs+=(iproute2)
have kubectl || pkgs+=(kubernetes-client)
if [ ${#pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    as_root=()
  elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
  else
    echo "scripts/test.sh: missing ${pkgs[*]} and cannot install them (not root, no sudo);" >&2
    echo "  install them (apt-get install ${pkgs[*]}) and run again" >&2
    exit 1
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "scripts/test.sh: missing ${pkgs[*]}; install them with your package manager" >&2
    echo "  (iproute2 gives 'ip'; kubernetes-client gives 'kubectl')" >&2
    exit 1
  fi
  echo "scripts/test.sh: installing ${pkgs[*]} (apt)" >&2
  "${as_root[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "scripts/test.sh: installing cargo-nextest (cargo install --locked)" >&2
  cargo install cargo-nextest --locked
fi

exec cargo nextest run --workspace "$@"
