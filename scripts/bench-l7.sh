#!/usr/bin/env bash
# L7 routing through meshpeer's real processes (issue 13, SPEC section 11),
# measured with wrk, side by side in one run: HTTP/1.1 keep-alive
# requests/s and p50/p99 latency at 1 and 64 connections, fetching a small
# file from nginx:
#   direct          the pod (nginx) itself;
#   nginx           nginx as a reverse proxy doing the same hop (keep-alive
#                   to the pod, as the proxy pools), in its own processes;
#   nginx, access log  the same with a JSON access log line per request
#                   (buffered), as the proxy writes one;
#   proxy L4        meshpeer's proxy, the service's port without a route;
#   proxy L7        the same port once an HTTPRoute attaches to it (a header
#                   match, a response header set, a Hostname backend): every
#                   request parsed, matched and sent over a pooled
#                   connection to an endpoint picked by the T-rules.
#   proxy L7, hyper  the same, the proxy restarted with `--l7-http1 hyper`:
#                   hyper serves every request, not the proxy's own
#                   HTTP/1.1 exchange (the path it replaces).
#   nginx, h2c / proxy L7, h2c  HTTP/2 clients (prior knowledge) with
#                   h2load, one stream at a time per connection; HTTP/1.1
#                   to the pod.
# Two file-mode clusters on loopback (scripts/lib/bench-mesh.sh); the
# endpoints are cluster1's own (the plain hop, no HBONE).
#
# Usage: scripts/bench-l7.sh
# The L7 rows run in rounds (ROUNDS, 3): nginx and the proxy one right
# after the other in each, then a summary of medians and of the rounds'
# ratios to nginx, so that a slow spell of a shared machine does not fall
# on one path only. Every meshpeer process runs in its own session (as
# nginx does once it daemonizes): with the kernel's autogroups on, the
# scheduler shares the CPU between sessions first, and a proxy in the
# script's session would share wrk's.
#
# Knobs: DURATION (5s per run), ROUNDS (3), MESHPEER_BIN (default
# target/release/meshpeer, built when missing), RUST_LOG (info: the
# proxy's access log is on, one line per request), KEEP=1 keeps the work
# folder, PERF=1 records a `perf` profile of the proxy during the L7 run at
# 64 connections (report printed at the end). Installs wrk, nginx and h2load when
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-3}
PATH=$PATH:/usr/sbin

SVC_PORT=8080 PORT_NAME=http
# shellcheck source=scripts/lib/bench-mesh.sh
source scripts/lib/bench-mesh.sh
need wrk nginx curl python3
command -v h2load >/dev/null 2>&1 || need nghttp2-client
mesh_build
ulimit -n "$(ulimit -Hn)"

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(uname -sr)"
echo "wrk:     $(wrk --version 2>&1 | head -1)"
echo "nginx:   $(nginx -v 2>&1)"
echo "meshpeer: $BIN (RUST_LOG=${RUST_LOG:-info})"
echo "command: DURATION=$DURATION ROUNDS=$ROUNDS scripts/bench-l7.sh"
echo

mesh_start

# The pod, and nginx as a reverse proxy doing the same hop as the proxy
# (upstream keep-alive), each in its own processes.
nginx_start pod "  keepalive_requests 1000000;
  server {
    listen $POD1:8080 backlog=4096;
    root $WORK/www;
  }"
# Port 15322 is the same proxy with a JSON access log, buffered as
# meshpeer's is batched (a line per request, like the proxy's).
nginx_start reverse-proxy "  keepalive_requests 1000000;
  log_format json escape=json '{\"time\":\"\$time_iso8601\",\"src\":\"\$remote_addr:\$remote_port\",'
    '\"method\":\"\$request_method\",\"authority\":\"\$http_host\",\"path\":\"\$request_uri\",'
    '\"status\":\$status,\"endpoint\":\"\$upstream_addr\",\"duration\":\$request_time}';
  upstream pod {
    server $POD1:8080;
    keepalive 128;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:15321 backlog=4096;
    location / {
      proxy_pass http://pod;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header Host \$http_host;
    }
  }
  server {
    listen 127.0.0.1:15322 backlog=4096;
    access_log $WORK/reverse-proxy/access.log json buffer=64k flush=1s;
    location / {
      proxy_pass http://pod;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header Host \$http_host;
    }
  }
  # HTTP/2 from the client (prior knowledge, as the proxy's L7 ports take
  # it), HTTP/1.1 kept alive to the pod.
  server {
    listen 127.0.0.1:15323 http2 backlog=4096;
    http2_max_requests 1000000;
    location / {
      proxy_pass http://pod;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header Host \$http_host;
    }
  }"
echo ok >"$WORK/www/small.txt"
chmod 644 "$WORK/www/small.txt"

# "requests/s p50_ms p99_ms errors" of one wrk run.
measure() { # url connections
  local threads=$(( $2 < 2 ? 1 : 2 ))
  wrk -t"$threads" -c"$2" -d"$DURATION" --latency "$1" 2>&1 | python3 -c '
import re, sys
text = sys.stdin.read()
def ms(v):
    n, unit = re.match(r"([\d.]+)(\w+)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000, "m": 60000}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)", text, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)", text, re.M).group(1))
errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
errors += int(non2xx.group(1)) if non2xx else 0
print("%d %.3f %.3f %d" % (rps, p50, p99, errors))
'
}

declare -A RPS
row() { # name url connections
  local r p50 p99 e
  read -r r p50 p99 e < <(measure "$2" "$3")
  RPS[$1/$3]=$r
  local base=${RPS[direct/$3]:-$r}
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$1" "$3" "$r" "$p50" "$p99" "$e" \
    "$(python3 -c "print('%.2f' % ($r / max($base, 1)))")"
}

L4_URL="http://$VIP:8080/small.txt"
echo "HTTP/1.1 keep-alive, small file (wrk --latency -d $DURATION; 1 connection: 1 thread, 64: 2 threads):"
printf '| path | connections | requests/s | p50 ms | p99 ms | errors | x direct |\n|---|---|---|---|---|---|---|\n'
for c in 1 64; do
  row direct "http://$POD1:8080/small.txt" "$c"
  row nginx "http://127.0.0.1:15321/small.txt" "$c"
  row "nginx, access log" "http://127.0.0.1:15322/small.txt" "$c"
  row "proxy L4" "$L4_URL" "$c"
done

# The route: every request matched (a header match first, then the
# default rule), a response header set, sent to the service's own global
# name (a Hostname backend).
cat >"$WORK/cluster1/route.yaml" <<EOF
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: $NAME, namespace: $NS}
spec:
  parentRefs: [{group: "", kind: Service, name: $NAME, port: 8080}]
  rules:
  - matches: [{headers: [{name: end-user, value: jason}]}]
    backendRefs: [{group: networking.istio.io, kind: Hostname, name: $HOST, port: 8080}]
  - filters: [{type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: x-routed, value: "yes"}]}}]
    backendRefs: [{group: networking.istio.io, kind: Hostname, name: $HOST, port: 8080}]
EOF
for _ in $(seq 1 100); do
  curl -s -D - -o /dev/null "$L4_URL" | grep -qi '^x-routed: yes' && break
  sleep 0.1
done
curl -s -D - -o /dev/null "$L4_URL" | grep -qi '^x-routed: yes' || {
  echo "the route never applied" >&2
  exit 1
}
# The L7 rows in rounds: each round measures nginx (without and with its
# access log) and the proxy one right after the other, each round starting
# at the next of them, so that a slow spell of a shared machine falls on
# all of them alike; the summary gives
# each path's median and the median of the rounds' ratios to nginx.
echo
echo "L7, $ROUNDS rounds (nginx and the proxy one after the other in each):"
printf '| path | connections | round | requests/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|---|---|\n'
round_row() { # name url connections round
  local r p50 p99 e
  read -r r p50 p99 e < <(measure "$2" "$3")
  printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$1" "$3" "$4" "$r" "$p50" "$p99" "$e"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$3" "$4" "$r" "$p50" "$p99" >>"$WORK/rounds.tsv"
}
for c in 1 64; do
  for round in $(seq 1 "$ROUNDS"); do
    # Each round starts at the next path: none is always measured first,
    # nor always right after the other's log was written.
    for i in 0 1 2; do
      case $(( (i + round - 1) % 3 )) in
        0) round_row nginx "http://127.0.0.1:15321/small.txt" "$c" "$round" ;;
        1) round_row "nginx, access log" "http://127.0.0.1:15322/small.txt" "$c" "$round" ;;
        2)
          if [ "$c" = 64 ] && [ "$round" = 1 ] && [ "${PERF:-0}" = 1 ] && command -v perf >/dev/null 2>&1; then
            perf record -q -g -p "$PROXY_PID" -o "$WORK/perf-l7.data" -- sleep 4 >/dev/null 2>&1 &
          fi
          round_row "proxy L7 (HTTPRoute)" "$L4_URL" "$c" "$round"
          ;;
      esac
    done
  done
done
# HTTP/2 clients (prior knowledge; one stream at a time per connection,
# as the HTTP/1.1 rows), measured with h2load, nginx and the proxy one
# after the other in each round. The proxy serves HTTP/2 clients with
# hyper, its backend connections HTTP/1.1 from hyper's pool.
# "requests/s mean_ms errors" of one h2load run.
measure_h2() { # url connections
  local threads=$(( $2 < 2 ? 1 : 2 ))
  h2load -D "${DURATION%s}" -c "$2" -t "$threads" -m 1 "$1" 2>&1 | python3 -c '
import re, sys
text = sys.stdin.read()
rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text).group(1))
m = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", text)
def ms(v):
    n, unit = re.match(r"([\d.]+)(\w+)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
r = re.search(r"requests: \d+ total, \d+ started, \d+ done, \d+ succeeded, (\d+) failed, (\d+) errored", text)
s = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
errors = int(r.group(1)) + int(r.group(2)) + int(s.group(3)) + int(s.group(4))
print("%d %.3f %d" % (rps, ms(m.group(1)), errors))
'
}
h2_row() { # name url connections round
  local r mean e
  read -r r mean e < <(measure_h2 "$2" "$3")
  printf '| %s | %s | %s | %s | %s | %s |\n' "$1" "$3" "$4" "$r" "$mean" "$e"
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$3" "$4" "$r" "$mean" "-1" >>"$WORK/rounds.tsv"
}
echo
echo "HTTP/2 clients (h2c prior knowledge, h2load -m 1), $ROUNDS rounds:"
printf '| path | connections | round | requests/s | mean ms | errors |\n|---|---|---|---|---|---|\n'
for c in 1 64; do
  for round in $(seq 1 "$ROUNDS"); do
    if [ $((round % 2)) = 1 ]; then
      h2_row "nginx, h2c" "http://127.0.0.1:15323/small.txt" "$c" "$round"
      h2_row "proxy L7, h2c" "$L4_URL" "$c" "$round"
    else
      h2_row "proxy L7, h2c" "$L4_URL" "$c" "$round"
      h2_row "nginx, h2c" "http://127.0.0.1:15323/small.txt" "$c" "$round"
    fi
  done
done

# Which exchange served them (the proxy's metrics).
curl -s http://127.0.0.1:15090/metrics | grep -E 'http1_(direct_requests|handoffs)_total' \
  | sed 's/^/  # /' || true
ACCESS_LINES=$(grep -c '"request"' "$(log proxy1)" || true)

# The same route, hyper serving every request (the path the proxy's own
# exchange replaced), next to nginx again.
kill "$PROXY_PID"
wait "$PROXY_PID" 2>/dev/null || true
mv "$(log proxy1)" "$WORK/proxy1-direct.log"
proxy_start --l7-http1 hyper
wait_for "$(log proxy1)" "proxy running" "proxy1 (--l7-http1 hyper)"
for _ in $(seq 1 100); do
  curl -s -D - -o /dev/null "$L4_URL" | grep -qi '^x-routed: yes' && break
  sleep 0.1
done
for c in 1 64; do
  round_row nginx "http://127.0.0.1:15321/small.txt" "$c" h
  round_row "proxy L7, hyper" "$L4_URL" "$c" h
done

echo
echo "L7 summary: medians over the rounds; x nginx is the median of each round's ratio to nginx in that round (h2c rows: to nginx, h2c; their p50 column is the mean, and they have no p99):"
python3 - "$WORK/rounds.tsv" <<'PY'
import statistics, sys, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
by = collections.defaultdict(dict)
for name, c, rnd, rps, p50, p99 in rows:
    by[(c, rnd)][name] = (float(rps), float(p50), float(p99))
print("| path | connections | rounds | requests/s (median) | p50 ms | p99 ms | x nginx |")
print("|---|---|---|---|---|---|---|")
for c in ("1", "64"):
    for name in ("nginx", "nginx, access log", "proxy L7 (HTTPRoute)", "proxy L7, hyper",
                 "nginx, h2c", "proxy L7, h2c"):
        base = "nginx, h2c" if "h2c" in name else "nginx"
        runs = [(r, by[(c, r)][name]) for (cc, r) in by if cc == c and name in by[(c, r)]]
        if not runs:
            continue
        ratios = [v[0] / by[(c, r)][base][0] for r, v in runs if base in by[(c, r)]]
        med = lambda i: statistics.median(v[i] for _, v in runs)
        p99 = "-" if med(2) < 0 else "%.3f" % med(2)
        print("| %s | %s | %d | %d | %.3f | %s | %.2f (%.2f-%.2f) |" % (
            name, c, len(runs), med(0), med(1), p99,
            statistics.median(ratios), min(ratios), max(ratios)))
PY
echo
echo "proxy access-log lines: $ACCESS_LINES (the own-exchange and h2c rows)"
if [ -f "$WORK/perf-l7.data" ]; then
  echo
  echo "perf profile of the proxy, L7 at 64 connections (self time, top 60):"
  perf report -i "$WORK/perf-l7.data" --stdio --no-header --no-children -g none --sort dso,sym --percent-limit 0.6 2>/dev/null \
    | grep -v '^$' | grep -v '^#' | head -60
fi
