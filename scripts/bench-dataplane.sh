#!/usr/bin/env bash
# The data-plane benchmark of BENCHMARKS.md ("Data plane"): one long TCP
# stream each way and 1 KiB request/response rates through
#   (a) direct loopback, (b) proxy -> local endpoint,
#   (c) proxy -> HBONE -> east-west gateway -> endpoint,
#   (d) haproxy in TCP mode doing the same hop as (b),
# side by side in one run, with ratios to direct.
#
# Installs haproxy (Debian package) when it is missing, prints the machine,
# then runs `cargo bench -p meshpeer --bench dataplane`. Knobs (environment):
# DP_SECS (2.5), DP_WARMUP_MS (500), DP_CONCURRENCY (1,16), DP_MSG (1024),
# DP_ROUNDS (1), DP_HAPROXY_THREADS (2), DP_SHARED_RUNTIME (0).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v haproxy >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
  else
    echo "haproxy is not installed (apt-get install haproxy); (d) is left out" >&2
  fi
fi

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(uname -sr)"
echo "rustc:   $(rustc --version)"
command -v haproxy >/dev/null 2>&1 && echo "haproxy: $(haproxy -v | head -1)"
echo "command: DP_SECS=${DP_SECS:-2.5} DP_CONCURRENCY=${DP_CONCURRENCY:-1,16} DP_ROUNDS=${DP_ROUNDS:-1} cargo bench -p meshpeer --bench dataplane"
echo
exec cargo bench --quiet -p meshpeer --bench dataplane
