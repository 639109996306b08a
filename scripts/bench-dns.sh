#!/usr/bin/env bash
# DNS answering speed of meshpeer's proxy, measured with dnsperf (issue 14),
# side by side in one run with NSD (an authoritative server written in C)
# serving the same names from a zone file:
#   hit       A query for a global name (perf.bench.mesh.internal)
#   nxdomain  A query for a name under mesh.internal that does not exist
#   forward   A query for a name outside the proxy's zones, which the proxy
#             forwards to its upstream (a second NSD serving example.test);
#             NSD's column is that upstream asked directly
# Each at 1 and 4 dnsperf clients (-c), 200 queries outstanding (-q), SECS
# seconds. Prints queries/s, lost queries and mean latency. One file-mode
# cluster on loopback: a controller and a proxy (real processes, release
# build), NSD with response rate limiting off.
#
# Usage: scripts/bench-dns.sh
# Knobs: SECS (5), MESHPEER_BIN (default target/release/meshpeer, built when
# missing), KEEP=1 keeps the work folder.
# Installs dnsperf and nsd (Debian packages) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${SECS:-5}

# shellcheck source=scripts/lib/bench-mesh.sh
source scripts/lib/bench-mesh.sh
PATH=$PATH:/usr/sbin
need dnsperf nsd python3
mesh_build

PROXY_DNS=15353 NSD_PORT=15355 UPSTREAM_PORT=15354
GW=127.0.81.1 POD=127.0.81.10
NS=bench NAME=perf HOST=$NAME.$NS.mesh.internal

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(uname -sr)"
echo "dnsperf: $(dnsperf -h 2>&1 | grep -m1 -i 'version' || dpkg-query -W -f '${Version}' dnsperf)"
echo "nsd:     $(nsd -v 2>&1 | head -1)"
echo "meshpeer: $BIN"
echo "command: SECS=$SECS scripts/bench-dns.sh"
echo

# The cluster: one global service with one ready pod.
SVC_PORT=80 PORT_NAME=http
cluster 1 "$POD"
dir=$WORK/cluster1
"$BIN" expose "$dir" --address $GW --write >/dev/null
"$BIN" certs root-ca --out "$WORK/root" >/dev/null
"$BIN" certs cluster cluster1 --root "$WORK/root" --out "$WORK/cacerts" >/dev/null
"$BIN" certs token --tokens "$WORK/tokens" --namespace istio-system \
  --service-account meshpeer-proxy --out "$WORK/proxy.token" >/dev/null

start controller controller --cluster-dir "$dir" --cacerts "$WORK/cacerts" \
  --tokens "$WORK/tokens" --api-listen 127.0.0.1:0 --vip-cidr 127.253.0.0/16 \
  --output-dir "$WORK/out" --log-format json
wait_for "$(log controller)" "cluster listener" "the controller"
start proxy proxy --controller "$GW:15013" --root-cert "$WORK/root/root-cert.pem" \
  --token-file "$WORK/proxy.token" --trust-domain cluster1 \
  --dns-listen 127.0.0.1:$PROXY_DNS --dns-upstream 127.0.0.1:$UPSTREAM_PORT \
  --allow-endpoints $POD --log-format json
wait_for "$(log proxy)" "proxy running" "the proxy"

# The VIP the proxy answers, for NSD's zone.
VIP=$(dns_a "$PROXY_DNS" "$HOST")
echo "the proxy answers $HOST -> $VIP"

# Two NSD servers: one authoritative for mesh.internal with the same record
# (the comparison), one for example.test (the proxy's upstream).
nsd_conf() { # name port zone
  mkdir -p "$WORK/$1"
  cat >"$WORK/$1/nsd.conf" <<EOF
server:
  ip-address: 127.0.0.1@$2
  username: ""
  chroot: ""
  zonesdir: "$WORK/$1"
  pidfile: "$WORK/$1/nsd.pid"
  zonelistfile: "$WORK/$1/zone.list"
  xfrdfile: "$WORK/$1/xfrd.state"
  xfrdir: "$WORK/$1"
  database: ""
  server-count: 1
  verbosity: 0
  hide-version: yes
  rrl-ratelimit: 0
  rrl-whitelist-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: $3
  zonefile: zone
EOF
}
zone() { # origin record...
  printf '$ORIGIN %s.\n$TTL 30\n@ IN SOA ns.%s. hostmaster.%s. 1 3600 600 86400 30\n@ IN NS ns.%s.\nns IN A 127.0.0.1\n' "$1" "$1" "$1" "$1"
  shift
  printf '%s\n' "$@"
}
nsd_conf nsd $NSD_PORT mesh.internal
zone mesh.internal "$NAME.$NS IN A $VIP" >"$WORK/nsd/zone"
nsd_conf upstream $UPSTREAM_PORT example.test
zone example.test "www IN A 192.0.2.80" >"$WORK/upstream/zone"
for n in nsd upstream; do
  nsd -d -c "$WORK/$n/nsd.conf" >"$WORK/$n.log" 2>&1 &
  PIDS+=($!)
done
for port in $NSD_PORT $UPSTREAM_PORT; do
  for _ in $(seq 1 100); do
    python3 - "$port" <<'EOF' && break
import socket, struct, sys
q = struct.pack(">HHHHHH", 9, 0, 1, 0, 0, 0) + b"\0" + struct.pack(">HH", 6, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(0.2)
s.sendto(q, ("127.0.0.1", int(sys.argv[1])))
try:
    s.recv(512)
except socket.timeout:
    sys.exit(1)
EOF
    sleep 0.1
  done
done

echo "$HOST A" >"$WORK/hit.txt"
echo "nope.$NS.mesh.internal A" >"$WORK/nxdomain.txt"
echo "www.example.test A" >"$WORK/forward.txt"

# "qps lost mean_ms" of one dnsperf run.
perf() { # port file clients
  dnsperf -s 127.0.0.1 -p "$1" -d "$2" -c "$3" -T "$3" -q 200 -l "$SECS" 2>&1 |
    awk '/Queries lost:/ {lost=$3}
         /Queries per second:/ {qps=$4}
         /Average Latency/ {gsub(/[(),]/," "); lat=$5}
         END {printf "%d %s %.3f\n", qps, lost, lat*1000}'
}

printf '| query | clients | meshpeer q/s | lost | mean ms | NSD q/s | lost | mean ms | meshpeer / NSD |\n'
printf '|---|---|---|---|---|---|---|---|---|\n'
for kind in hit nxdomain forward; do
  for clients in 1 4; do
    read -r mq ml mlat < <(perf $PROXY_DNS "$WORK/$kind.txt" "$clients")
    nport=$([ $kind = forward ] && echo $UPSTREAM_PORT || echo $NSD_PORT)
    read -r nq nl nlat < <(perf "$nport" "$WORK/$kind.txt" "$clients")
    ratio=$(python3 -c "print(f'{$mq / max($nq, 1):.2f}')")
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' \
      "$kind" "$clients" "$mq" "$ml" "$mlat" "$nq" "$nl" "$nlat" "$ratio"
  done
done
