#!/usr/bin/env bash
# Load through meshpeer's real processes (issue 14), with tools nobody here
# wrote, side by side in one run:
#   1. new connections/s: ApacheBench (`ab`, no keep-alive: one TCP
#      connection per request) fetching a small file from nginx, direct,
#      through haproxy 2.x (TCP mode) and through meshpeer's proxy (plain
#      hop), then through the proxy over HBONE to cluster2's gateway;
#   2. memory per idle tunnel: the gateway's and the proxy's resident
#      memory before and after 1,000 idle connections are held open
#      through the proxy over HBONE (measured before 3, whose buffers the
#      allocator keeps);
#   3. 1,000 concurrent connections through the proxy over HBONE, each
#      fetching 1 MiB (ab -n 1000 -c 1000): completed, failed, time.
# Two file-mode clusters on loopback (scripts/lib/bench-mesh.sh): a
# controller and a gateway each, a proxy in cluster1, nginx at the pods'
# addresses.
#
# Usage: scripts/bench-load.sh
# Knobs: REQUESTS (20000, for connections/s), CONCURRENCY (50), MESHPEER_BIN
# (default target/release/meshpeer, built when missing), KEEP=1 keeps the
# work folder. Installs nginx, apache2-utils (ab) and haproxy when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-20000}
CONCURRENCY=${CONCURRENCY:-50}
PATH=$PATH:/usr/sbin

SVC_PORT=8080 PORT_NAME=http
# shellcheck source=scripts/lib/bench-mesh.sh
source scripts/lib/bench-mesh.sh
command -v ab >/dev/null 2>&1 || need apache2-utils
need nginx haproxy python3
mesh_build
ulimit -n "$(ulimit -Hn)"  # ab -c 1000 and 1,000 held connections

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(uname -sr)"
echo "ab:      $(ab -V | head -1)"
echo "nginx:   $(nginx -v 2>&1)"
echo "haproxy: $(haproxy -v | head -1)"
echo "meshpeer: $BIN"
echo "command: REQUESTS=$REQUESTS CONCURRENCY=$CONCURRENCY scripts/bench-load.sh"
echo

mesh_start

# nginx at both pods' addresses: a small file and 1 MiB.
nginx_start pods "  server {
    listen $POD1:8080 backlog=4096;
    listen $POD2:8080 backlog=4096;
    root $WORK/www;
  }"
echo ok >"$WORK/www/small.txt"
head -c 1048576 /dev/urandom >"$WORK/www/1m.bin"
chmod 644 "$WORK/www/small.txt" "$WORK/www/1m.bin"
cat >"$WORK/haproxy.cfg" <<EOF
global
  nbthread 2
  maxconn 8000
defaults
  mode tcp
  maxconn 8000
  timeout connect 5s
  timeout client 120s
  timeout server 120s
listen bench
  bind 127.0.0.1:15311
  server pod $POD1:8080
EOF
haproxy -f "$WORK/haproxy.cfg" -D -p "$WORK/haproxy.pid"
for _ in $(seq 1 50); do [ -s "$WORK/haproxy.pid" ] && break; sleep 0.1; done
PIDS+=("$(cat "$WORK/haproxy.pid")")

# "requests/s failed completed" of one ab run (a non-2xx answer counts
# as failed).
rate() { # url requests concurrency
  ab -q -r -n "$2" -c "$3" "$1" 2>&1 |
    awk '/^Requests per second:/ {rps=$4} /^Failed requests:/ {failed+=$3}
         /^Non-2xx responses:/ {failed+=$3} /^Complete requests:/ {done=$3}
         END {printf "%d %d %d\n", rps, failed, done}'
}

echo "new connections/s (ab -n $REQUESTS -c $CONCURRENCY, one connection per request, small file):"
printf '| path | connections/s | failed | x direct |\n|---|---|---|---|\n'
read -r direct failed _ < <(rate "http://$POD1:8080/small.txt" "$REQUESTS" "$CONCURRENCY")
printf '| direct | %s | %s | 1.00 |\n' "$direct" "$failed"
row() { # name url
  local r f
  read -r r f _ < <(rate "$2" "$REQUESTS" "$CONCURRENCY")
  printf '| %s | %s | %s | %s |\n' "$1" "$r" "$f" "$(python3 -c "print('%.2f' % ($r / max($direct, 1)))")"
}
row haproxy "http://127.0.0.1:15311/small.txt"
row proxy "http://$VIP:8080/small.txt"

# cluster1's pod not ready: the proxy goes to cluster2 over HBONE.
pod "$NAME-0" $POD1 False >"$WORK/cluster1/pod.yaml.tmp"
mv "$WORK/cluster1/pod.yaml.tmp" "$WORK/cluster1/pod.yaml"
for _ in $(seq 1 100); do
  curl -s -o /dev/null "http://$VIP:8080/small.txt" || true
  grep -q "tunnel open" "$(log gateway2)" && break
  sleep 0.1
done
grep -q "tunnel open" "$(log gateway2)" || { echo "the proxy never went over HBONE" >&2; exit 1; }
row "proxy, HBONE" "http://$VIP:8080/small.txt"
echo

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
GW2_PID=$(pgrep -f "$BIN gateway --controller $GW2" | head -1)
PROXY_PID=$(pgrep -f "$BIN proxy" | head -1)
opened_before=$(grep -c "tunnel open" "$(log gateway2)" || true)
gw_before=$(rss_kib "$GW2_PID")
proxy_before=$(rss_kib "$PROXY_PID")
# 1,000 idle connections through the proxy over HBONE, held until the
# gateway has opened a tunnel stream for each (its log), then measured.
python3 - "$VIP" "$(log gateway2)" "$opened_before" "$GW2_PID" "$PROXY_PID" >"$WORK/idle.txt" <<'EOF' ||
import socket, sys, time
vip, log, before, gw, proxy = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
def rss(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
socks = []
for _ in range(1000):
    s = socket.create_connection((vip, 8080), timeout=10)
    socks.append(s)
deadline = time.time() + 60
while True:
    opened = sum(1 for line in open(log) if "tunnel open" in line) - before
    if opened >= 1000:
        break
    if time.time() > deadline:
        sys.exit(f"only {opened} of 1000 tunnel streams opened at the gateway")
    time.sleep(0.2)
print(rss(gw), rss(proxy))
for s in socks:
    s.close()
EOF
  { cat "$WORK/idle.txt"; exit 1; }
read -r gw_after proxy_after <"$WORK/idle.txt"
echo "memory per idle connection over HBONE (1,000 held open):"
printf '| process | RSS before KiB | RSS with 1,000 idle KiB | per connection KiB |\n|---|---|---|---|\n'
printf '| gateway (cluster2) | %s | %s | %s |\n' "$gw_before" "$gw_after" "$(python3 -c "print('%.1f' % (($gw_after - $gw_before) / 1000))")"
printf '| proxy (cluster1) | %s | %s | %s |\n' "$proxy_before" "$proxy_after" "$(python3 -c "print('%.1f' % (($proxy_after - $proxy_before) / 1000))")"
echo

echo "1,000 concurrent connections over HBONE, 1 MiB each (ab -n 1000 -c 1000):"
start_ns=$(date +%s%N)
out=$(ab -r -n 1000 -c 1000 "http://$VIP:8080/1m.bin" 2>&1 || true)
end_ns=$(date +%s%N)
echo "$out" | grep -E -A1 "^(Complete requests|Failed requests|Non-2xx|Total transferred|Time taken)" | grep -v '^--' | sed 's/^/  /'
echo "  wall time: $(( (end_ns - start_ns) / 1000000 )) ms"
echo
