#!/usr/bin/env bash
# Bulk throughput through meshpeer's real processes, measured with iperf3
# (issue 14), side by side in one run:
#   direct       iperf3 -> the pod's iperf3 server
#   haproxy      haproxy 2.x TCP mode (nbthread 2) -> the pod
#   haproxy+splice  the same with `option splice-auto`
#   proxy        meshpeer proxy (VIP) -> the local pod (plain TCP hop)
#   hbone        meshpeer proxy (VIP) -> HBONE -> meshpeer gateway -> the
#                remote pod (cluster1's pod made not ready)
# For each path: one stream up, one stream down (-R) and 4 parallel streams
# (-P 4), the median of RUNS runs of SECS seconds, in Gbit/s and as a ratio
# to direct. Two file-mode clusters on loopback: a controller and a gateway
# each, a proxy in cluster1, iperf3 servers at the pods' addresses.
#
# Usage: scripts/bench-iperf.sh            (release build of meshpeer)
# Knobs: RUNS (3), SECS (4), MESHPEER_BIN (default: target/release/meshpeer,
# built when missing), KEEP=1 keeps the work folder, PATHS (default: all;
# e.g. PATHS="direct proxy" measures those only; direct is always
# measured, for the ratios), PERF=1 records a `perf` profile of the proxy
# process during the proxy and hbone paths (perf.data in the work folder).
# Installs iperf3 and haproxy (Debian packages) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
SECS=${SECS:-4}

SVC_PORT=5201 PORT_NAME=tcp-iperf
# shellcheck source=scripts/lib/bench-mesh.sh
source scripts/lib/bench-mesh.sh
need iperf3 haproxy python3
mesh_build

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(uname -sr)"
echo "iperf3:  $(iperf3 --version | head -1)"
echo "haproxy: $(haproxy -v | head -1)"
echo "meshpeer: $BIN"
echo "command: RUNS=$RUNS SECS=$SECS scripts/bench-iperf.sh"
echo

mesh_start

# iperf3 servers at the pods' addresses, haproxy in front of cluster1's pod.
iperf3 -s -B $POD1 -p 5201 -D --pidfile "$WORK/iperf1.pid"
iperf3 -s -B $POD2 -p 5201 -D --pidfile "$WORK/iperf2.pid"
# The daemons write their pid files after forking.
for _ in $(seq 1 50); do
  [ -s "$WORK/iperf1.pid" ] && [ -s "$WORK/iperf2.pid" ] && break
  sleep 0.1
done
PIDS+=("$(cat "$WORK/iperf1.pid")" "$(cat "$WORK/iperf2.pid")")
haproxy_cfg() { # port extra
  cat <<EOF
global
  nbthread 2
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
listen bench
  bind 127.0.0.1:$1
  $2
  server pod $POD1:5201
EOF
}
haproxy_cfg 15301 "" >"$WORK/haproxy.cfg"
haproxy_cfg 15302 "option splice-auto" >"$WORK/haproxy-splice.cfg"
haproxy -f "$WORK/haproxy.cfg" -D -p "$WORK/haproxy.pid"
haproxy -f "$WORK/haproxy-splice.cfg" -D -p "$WORK/haproxy-splice.pid"
PIDS+=("$(cat "$WORK/haproxy.pid")" "$(cat "$WORK/haproxy-splice.pid")")

# Gbit/s of one iperf3 run (receiver side).
gbps() { # addr port extra-args
  iperf3 -c "$1" -p "$2" -t "$SECS" -J "${@:3}" 2>/dev/null | python3 -c '
import json, sys
r = json.load(sys.stdin)
print("%.2f" % (r["end"]["sum_received"]["bits_per_second"] / 1e9))'
}
median() { python3 -c 'import statistics, sys; print("%.2f" % statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
measure() { # addr port extra-args -> median
  local runs=()
  for _ in $(seq 1 "$RUNS"); do runs+=("$(gbps "$@")"); done
  median "${runs[@]}"
}

declare -A RESULT
read -r -a paths <<<"${PATHS:-direct haproxy haproxy+splice proxy hbone}"
[[ " ${paths[*]} " == *" direct "* ]] || paths=(direct "${paths[@]}")
want() { [[ " ${paths[*]} " == *" $1 "* ]]; }
PROXY_PID=$(pgrep -f "$BIN proxy" | head -1)
profile() { # name: perf for SECS*RUNS*3 seconds on the proxy, in the background
  if [ "${PERF:-0}" = 1 ] && command -v perf >/dev/null 2>&1; then
    perf record -q -g -p "$PROXY_PID" -o "$WORK/perf-$1.data" -- sleep $((SECS * RUNS * 3)) >/dev/null 2>&1 &
  fi
}
modes=(up down P4)
mode_args() { case $1 in up) echo "" ;; down) echo "-R" ;; P4) echo "-P 4" ;; esac; }
run_path() { # path addr port
  for m in "${modes[@]}"; do
    # shellcheck disable=SC2046
    RESULT[$1/$m]=$(measure "$2" "$3" $(mode_args "$m"))
  done
}
run_path direct $POD1 5201
want haproxy && run_path haproxy 127.0.0.1 15301
want haproxy+splice && run_path haproxy+splice 127.0.0.1 15302
if want proxy; then
  profile proxy
  run_path proxy "$VIP" 5201
fi
if ! want hbone; then
  paths_done=1
fi
# cluster1's pod not ready: the proxy goes to cluster2 over HBONE.
if [ -z "${paths_done:-}" ]; then
  pod "$NAME-0" $POD1 False >"$WORK/cluster1/pod.yaml.tmp"
  mv "$WORK/cluster1/pod.yaml.tmp" "$WORK/cluster1/pod.yaml"
  for _ in $(seq 1 100); do
    iperf3 -c "$VIP" -p 5201 -t 1 >/dev/null 2>&1 || true
    grep -q "tunnel open" "$(log gateway2)" && break
  done
  grep -q "tunnel open" "$(log gateway2)" || { echo "the proxy never went over HBONE" >&2; exit 1; }
  profile hbone
  run_path hbone "$VIP" 5201
fi

printf '\n%-16s' path
for m in "${modes[@]}"; do printf '%18s' "$m Gbit/s (x)"; done
echo
for p in "${paths[@]}"; do
  printf '%-16s' "$p"
  for m in "${modes[@]}"; do
    v=${RESULT[$p/$m]}
    d=${RESULT[direct/$m]}
    printf '%18s' "$v ($(python3 -c "print('%.2f' % ($v / $d if $d else 0))"))"
  done
  echo
done
