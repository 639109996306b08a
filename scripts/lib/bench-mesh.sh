# Shared by the bench scripts that run meshpeer's real processes: two
# file-mode clusters on loopback, a controller and a gateway each, a proxy
# in cluster1, one global service $HOST whose pods sit at $POD1 (cluster1)
# and $POD2 (cluster2). Source it after setting SVC_PORT, PORT_NAME (the
# service's port and its name) and, optionally, BIN; then call
# `mesh_start`, which leaves $VIP (the service's VIP in cluster1) set.
# Sourced, not run.

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
BIN=${MESHPEER_BIN:-target/release/meshpeer}

# A meshpeer process in the background, its output in $WORK/<name>.log.
log() { echo "$WORK/$1.log"; }
start() { # name args...
  local name=$1
  shift
  RUST_LOG=${RUST_LOG:-info} setsid "$BIN" "$@" >"$(log "$name")" 2>&1 &
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

mesh_build() {
  if [ ! -x "$BIN" ]; then
    echo "building $BIN (cargo build --release -p meshpeer)" >&2
    cargo build --release --quiet -p meshpeer
  fi
  BIN=$(realpath "$BIN")

  WORK=$(mktemp -d /tmp/meshpeer-bench.XXXXXX)
  PIDS=()
  cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
  }
  trap cleanup EXIT

}

# Addresses: cluster N's gateway at 127.0.7N.1, its pod at 127.0.7N.10.
POD1=127.0.71.10 POD2=127.0.72.10 GW1=127.0.71.1 GW2=127.0.72.1
NS=bench NAME=perf HOST=$NAME.$NS.mesh.internal

pod() { # name ip ready
  cat <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $1, namespace: $NS, labels: {app: $NAME}}
spec: {containers: [{name: app, image: app}]}
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
  ports: [{name: $PORT_NAME, port: $SVC_PORT, targetPort: $SVC_PORT}]
EOF
  pod "$NAME-0" "$2" True >"$dir/pod.yaml"
}

# The first A record the DNS server at 127.0.0.1:PORT answers for HOST,
# asked again until it answers (30 s at most).
dns_a() { # port host
python3 - "$1" "$2" <<'EOF'
import socket, struct, sys, time
q = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in sys.argv[2].split(".")) + b"\0"
q += struct.pack(">HH", 1, 1)
deadline = time.time() + 30
while True:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1)
    s.sendto(q, ("127.0.0.1", int(sys.argv[1])))
    try:
        r = s.recv(512)
        if r[3] & 0x0F == 0 and struct.unpack(">H", r[6:8])[0] > 0:
            print(".".join(str(b) for b in r[-4:]))
            break
    except socket.timeout:
        pass
    if time.time() > deadline:
        sys.exit("no answer for " + sys.argv[2])
    time.sleep(0.1)
EOF
}

# cluster1's proxy, with any extra arguments given (mesh_start gives it
# $PROXY_ARGS); its metrics at
# 127.0.0.1:15090 and its pid in PROXY_PID.
proxy_start() { # extra proxy args...
  start proxy1 proxy --controller "$GW1:15013" --root-cert "$WORK/root/root-cert.pem" \
    --token-file "$WORK/proxy1.token" --trust-domain cluster1 --dns-listen 127.0.0.1:0 \
    --allow-endpoints $POD1 --log-format json --metrics 127.0.0.1:15090 "$@"
  PROXY_PID=$!
}

mesh_start() {
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
# shellcheck disable=SC2086 # PROXY_ARGS: extra arguments, split as words.
proxy_start ${PROXY_ARGS:-}
for p in gateway1 gateway2; do wait_for "$(log $p)" "gateway running" "$p"; done
wait_for "$(log proxy1)" "proxy running" "proxy1"
# The proxy's DNS port, from its "proxy running" log line.
dns_port=$(python3 - "$(log proxy1)" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    try:
        v = json.loads(line)
    except ValueError:
        continue
    if str(v.get("fields", {}).get("message", "")).startswith("proxy running"):
        print(v["fields"]["dns"].rsplit(":", 1)[1])
EOF
)
VIP=$(dns_a "$dns_port" "$HOST")
echo "VIP of $HOST in cluster1: $VIP"
}

# An nginx instance NAME (its own master and workers) with the given
# `http {}` body (server and upstream blocks) after the settings the
# benches share (no access log, temp paths and pid in $WORK/NAME, long
# keep-alive); started as a daemon, stopped with the other processes.
# Content is served from $WORK/www. The pods and a reverse proxy in front
# of them are separate instances, as meshpeer's proxy and the pods are
# separate processes: one nginx for both would serve a proxied request's
# backend half in the worker that proxies it, with no wake-up between.
nginx_start() { # name http-body
  local dir=$WORK/$1
  mkdir -p "$WORK/www" "$dir"
  # nginx's workers run as an unprivileged user: let them in.
  chmod 755 "$WORK" "$WORK/www"
  cat >"$dir/nginx.conf" <<EOF
worker_processes 2;
pid $dir/nginx.pid;
error_log $dir/error.log;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $dir;
  proxy_temp_path $dir;
  fastcgi_temp_path $dir;
  uwsgi_temp_path $dir;
  scgi_temp_path $dir;
  keepalive_timeout 120s;
  client_header_timeout 120s;
$2
}
EOF
  nginx -c "$dir/nginx.conf" -g 'daemon on;'
  for _ in $(seq 1 50); do [ -s "$dir/nginx.pid" ] && break; sleep 0.1; done
  PIDS+=("$(cat "$dir/nginx.pid")")
}
