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
BIN=${MESHPEER_BIN:-target/release/meshpeer}

need() {
  local missing=()
  for tool in "$@"; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "missing: ${missing[*]} (apt-get install ${missing[*]})" >&2
    exit 2
  fi
}
need iperf3 haproxy python3
if [ ! -x "$BIN" ]; then
  echo "building $BIN (cargo build --release -p meshpeer)" >&2
  cargo build --release --quiet -p meshpeer
fi
BIN=$(realpath "$BIN")

WORK=$(mktemp -d /tmp/meshpeer-iperf.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# Addresses: cluster N's gateway at 127.0.7N.1, its pod at 127.0.7N.10.
POD1=127.0.71.10 POD2=127.0.72.10 GW1=127.0.71.1 GW2=127.0.72.1
NS=bench NAME=perf HOST=$NAME.$NS.mesh.internal

pod() { # name ip ready
  cat <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1, namespace: $NS, labels: {app: $NAME}}
spec: {containers: [{name: iperf3, image: networkstatic/iperf3}]}
status: {phase: Running, podIP: $2, conditions: [{type: Ready, status: "$3"}]}
EOF
}

cluster() { # n pod-ip
  local dir=$WORK/cluster$1
  mkdir -p "$dir"
  printf 'name: cluster%s\nregion: r%s\nzone: z%s\n' "$1" "$1" "$1" >"$dir/cluster.yaml"
  cat >"$dir/app.yaml" <<EOF
apiVersion: v1
kind: Namespace
metadata: {name: $NS}
---
apiVersion: v1
kind: Service
metadata: {name: $NAME, namespace: $NS, labels: {solo.io/service-scope: global}}
spec:
  selector: {app: $NAME}
  ports: [{name: tcp-iperf, port: 5201, targetPort: 5201}]
EOF
  pod "$NAME-0" "$2" True >"$dir/pod.yaml"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(uname -sr)"
echo "iperf3:  $(iperf3 --version | head -1)"
echo "haproxy: $(haproxy -v | head -1)"
echo "meshpeer: $BIN"
echo "command: RUNS=$RUNS SECS=$SECS scripts/bench-iperf.sh"
echo

cluster 1 $POD1
cluster 2 $POD2
"$BIN" expose "$WORK/cluster1" --address $GW1 --write >/dev/null
"$BIN" expose "$WORK/cluster2" --address $GW2 --write >/dev/null
"$BIN" link "$WORK/cluster1" "$WORK/cluster2" >/dev/null
"$BIN" certs root-ca --out "$WORK/root" >/dev/null
for n in 1 2; do
  "$BIN" certs cluster cluster$n --root "$WORK/root" --out "$WORK/cacerts$n" >/dev/null
  "$BIN" certs token --tokens "$WORK/tokens$n" --namespace istio-eastwest \
    --service-account istio-eastwest --out "$WORK/gw$n.token" >/dev/null
done
"$BIN" certs token --tokens "$WORK/tokens1" --namespace istio-system \
  --service-account meshpeer-proxy --out "$WORK/proxy1.token" >/dev/null

log() { echo "$WORK/$1.log"; }
start() { # name args...
  local name=$1
  shift
  RUST_LOG=${RUST_LOG:-info} "$BIN" "$@" >"$(log "$name")" 2>&1 &
  PIDS+=($!)
}
wait_for() { # file pattern what
  for _ in $(seq 1 300); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "timed out waiting for $3; log:" >&2
  tail -20 "$1" >&2
  exit 1
}

# Each controller takes the other's pod (loopback, refused by default: B1).
start controller1 controller --cluster-dir "$WORK/cluster1" --cacerts "$WORK/cacerts1" \
  --tokens "$WORK/tokens1" --api-listen 127.0.0.1:0 --vip-cidr 127.251.0.0/16 \
  --output-dir "$WORK/out1" --allow-endpoints $POD2 --log-format json
start controller2 controller --cluster-dir "$WORK/cluster2" --cacerts "$WORK/cacerts2" \
  --tokens "$WORK/tokens2" --api-listen 127.0.0.1:0 --vip-cidr 127.252.0.0/16 \
  --output-dir "$WORK/out2" --allow-endpoints $POD1 --log-format json
for n in 1 2; do
  wait_for "$(log controller$n)" "cluster listener" "controller $n"
done
# The cluster listener is at the gateway's address, port 15013.
for n in 1 2; do
  gw=$([ $n = 1 ] && echo $GW1 || echo $GW2)
  pod=$([ $n = 1 ] && echo $POD1 || echo $POD2)
  start gateway$n gateway --controller "$gw:15013" --root-cert "$WORK/root/root-cert.pem" \
    --token-file "$WORK/gw$n.token" --trust-domain cluster$n --listen "$gw:15008" \
    --allow-endpoints "$pod" --log-format json
done
start proxy1 proxy --controller "$GW1:15013" --root-cert "$WORK/root/root-cert.pem" \
  --token-file "$WORK/proxy1.token" --trust-domain cluster1 --dns-listen 127.0.0.1:0 \
  --allow-endpoints $POD1 --log-format json
for p in gateway1 gateway2; do wait_for "$(log $p)" "gateway running" "$p"; done
wait_for "$(log proxy1)" "proxy running" "proxy1"
VIP=$(python3 - "$(log proxy1)" "$HOST" <<'EOF'
import json, socket, struct, sys
dns = None
for line in open(sys.argv[1]):
    try:
        v = json.loads(line)
    except ValueError:
        continue
    if str(v.get("fields", {}).get("message", "")).startswith("proxy running"):
        dns = v["fields"]["dns"]
host, port = dns.rsplit(":", 1)
q = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in sys.argv[2].split(".")) + b"\0"
q += struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.sendto(q, (host, int(port)))
r = s.recv(512)
print(".".join(str(b) for b in r[-4:]))
EOF
)
echo "VIP of $HOST in cluster1: $VIP"

# iperf3 servers at the pods' addresses, haproxy in front of cluster1's pod.
iperf3 -s -B $POD1 -p 5201 -D --pidfile "$WORK/iperf1.pid"
iperf3 -s -B $POD2 -p 5201 -D --pidfile "$WORK/iperf2.pid"
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
