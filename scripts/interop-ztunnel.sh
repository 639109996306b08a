#!/usr/bin/env bash
# Interop test with a real ztunnel (istio/ztunnel), issue 17 points 3 and 4.
#
#   ZTUNNEL_BIN=/path/to/ztunnel [MESHPEER_BIN=/path/to/meshpeer] scripts/interop-ztunnel.sh
#
# Opt-in: without ZTUNNEL_BIN it prints why it skips and exits 0. Needs root
# (network namespaces), iproute2, curl and python3 with `cryptography`.
#
# Topology (only loopback and the addresses inside these namespaces carry
# test traffic):
#
#   cluster1 (netns C1)                      cluster2 (netns C2)               pod (netns P2)
#   meshpeer controller 192.168.77.1  ====  meshpeer controller 192.168.77.2
#   ztunnel #1 (dedicated, client         meshpeer gateway 192.168.77.2:15008
#     httpbin/client-in-ambient)               |  10.2.0.1 ============ 10.2.0.21
#   curl --socks5 ztunnel#1 VIP:8000 ----------'                        ztunnel #2 :15008 (dedicated,
#                                                                         httpbin/in-ambient)
#                                                                       backend 10.2.0.21:8080
#
# ztunnel #1 is configured by a local file (LOCAL_XDS_PATH): the global
# service in-ambient.httpbin.mesh.internal with the VIP meshpeer's cluster1
# controller gave it, its subjectAltNames, and one address-less endpoint on
# network cluster2 whose network gateway is meshpeer's gateway. ztunnel #1
# sends double HBONE there; meshpeer's gateway forwards the inner stream to
# the ambient pod's 15008 (ztunnel #2), which hands it to the backend. Both
# ztunnels get their certificates from meshpeer's controllers
# (istio.v1.auth.IstioCertificateService/CreateCertificate, bearer token).
#
# Status (INTEROP.md): both clusters share the trust domain cluster.local
# (Istio's multi-network model, which ztunnel's inbound requires: finding
# 2), each with its own intermediate bound to its cluster by the root
# (`meshpeer certs cluster NAME --trust-domain TD`); the run passes with
# no harness workaround (run G). Findings 0 and 1 are fixed in meshpeer:
# the ztunnels get their certificates from its cluster listener directly.
# INTEROP_SHARED_TD= (empty) gives each cluster its own trust domain as in
# runs A-F, where ztunnel #2 refuses the inner handshake. The relay stays
# for INTEROP_DEST_TD=cluster1 (a diagnostic of that case).
#
# Knobs (see INTEROP.md for what each shows):
#   INTEROP_CA_RELAY=0     (default) ztunnel talks to meshpeer's cluster
#                          listener directly; 1: through a TLS relay (needed
#                          by INTEROP_DEST_TD=cluster1, whose pod gets its
#                          certificate from cluster1's controller).
#   INTEROP_DEST_TD=cluster2 (default) the cluster whose controller signs
#                          the destination pod's identity; cluster1
#                          (diagnostic, with INTEROP_SHARED_TD= only) gives
#                          the destination an identity signed by cluster1's
#                          controller, the one trust domain ztunnel #2 then
#                          accepts callers from.
#   INTEROP_SHARED_TD=TD   the trust domain both clusters share (default
#                          cluster.local, as Istio's multi-network ambient
#                          expects); empty: each cluster's trust domain is
#                          its name (meshpeer's per-cluster mode).
#   INTEROP_TOKEN_AS_WRITTEN=1 (default) give ztunnel the token file exactly
#                          as `meshpeer certs token` wrote it; 0: a copy
#                          without a trailing newline (finding 0, fixed).
#   INTEROP_PEERING_WAIT=S how long to wait for peering (default 60 s).
#   ZTUNNEL_LOG=FILTER     ztunnel's RUST_LOG (default info), e.g. info,rustls=debug.
#   KEEP_WORK=1            keep the work folder (logs, configs, certs; a
#                          failing run always keeps it).
set -euo pipefail

if [ -z "${ZTUNNEL_BIN:-}" ]; then
  echo "interop-ztunnel: skipped: set ZTUNNEL_BIN=/path/to/ztunnel (built from istio/ztunnel; see INTEROP.md) to run the interop test with a real ztunnel"
  exit 0
fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
HERE="$ROOT/scripts"
MESHPEER_BIN=${MESHPEER_BIN:-}
if [ -z "$MESHPEER_BIN" ]; then
  if [ -x "$ROOT/target/release/meshpeer" ]; then
    MESHPEER_BIN="$ROOT/target/release/meshpeer"
  else
    MESHPEER_BIN=$(command -v meshpeer || true)
  fi
fi
CA_RELAY=${INTEROP_CA_RELAY:-0}
DEST_TD=${INTEROP_DEST_TD:-cluster2}
SHARED_TD=${INTEROP_SHARED_TD-cluster.local}
# Trust domains of cluster1, cluster2 and of the destination pod's identity.
TD1=${SHARED_TD:-cluster1}
TD2=${SHARED_TD:-cluster2}
DTD=${SHARED_TD:-$DEST_TD}

step() { printf '\n=== %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf '\nFAIL: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "needs root to make network namespaces (ip netns)"
[ -x "$ZTUNNEL_BIN" ] || die "ZTUNNEL_BIN=$ZTUNNEL_BIN is not an executable"
[ -n "$MESHPEER_BIN" ] && [ -x "$MESHPEER_BIN" ] || die "no meshpeer binary: build it (cargo build --release -p meshpeer) or set MESHPEER_BIN"
for t in ip curl python3; do command -v "$t" >/dev/null || die "missing $t"; done
python3 -c 'import cryptography' 2>/dev/null || die "python3 needs the cryptography package (pip install cryptography)"

ID=$$
C1="iztc1-$ID"; C2="iztc2-$ID"; P2="iztp2-$ID"
WORK=$(mktemp -d /tmp/interop-ztunnel.XXXXXX)
PIDS=()
declare -A PID_OF=()
NAMESPACES=()

cleanup() {
  local rc=$?
  set +e
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
  done
  for n in "${NAMESPACES[@]}"; do ip netns del "$n" 2>/dev/null; done
  if [ "${KEEP_WORK:-0}" = 1 ] || [ "$rc" -ne 0 ]; then
    echo "work folder kept: $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

in_ns() { local n=$1; shift; ip netns exec "$n" "$@"; }
# start NAME NETNS CMD... : background process, output to $WORK/logs/NAME.log
start() {
  local name=$1 n=$2; shift 2
  ip netns exec "$n" "$@" >"$WORK/logs/$name.log" 2>&1 &
  PIDS+=($!)
  PID_OF[$name]=$!
  info "started $name (pid $!) in $n: $*"
}
# wait_for WHAT SECONDS CMD... : retry CMD until it succeeds; gives up at
# once when the process named in $WATCH (started by `start`) has exited
WATCH=
wait_for() {
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { info "timed out: $what"; return 1; }
    if [ -n "$WATCH" ] && ! kill -0 "${PID_OF[$WATCH]}" 2>/dev/null; then
      info "not ready: $what ($WATCH exited)"; return 1
    fi
    sleep 0.5
  done
  info "ready: $what"
}
show_log() { echo "--- $1 (last ${2:-25} lines)"; tail -n "${2:-25}" "$WORK/logs/$1.log" | sed 's/^/    /'; }

mkdir -p "$WORK/logs" "$WORK/www"
step "versions"
info "meshpeer: $("$MESHPEER_BIN" --version) ($MESHPEER_BIN)"
info "ztunnel:  $ZTUNNEL_BIN ($(stat -c %s "$ZTUNNEL_BIN") bytes)"
info "work:     $WORK"

step "1. network namespaces: $C1 (cluster1), $C2 (cluster2), $P2 (cluster2's ambient pod)"
for n in "$C1" "$C2" "$P2"; do ip netns add "$n"; NAMESPACES+=("$n"); ip -n "$n" link set lo up; done
ip link add "izv1-$ID" type veth peer name "izv2-$ID"
ip link set "izv1-$ID" netns "$C1"; ip link set "izv2-$ID" netns "$C2"
ip -n "$C1" addr add 192.168.77.1/24 dev "izv1-$ID"; ip -n "$C1" link set "izv1-$ID" up
ip -n "$C2" addr add 192.168.77.2/24 dev "izv2-$ID"; ip -n "$C2" link set "izv2-$ID" up
ip link add "izn2-$ID" type veth peer name "izp2-$ID"
ip link set "izn2-$ID" netns "$C2"; ip link set "izp2-$ID" netns "$P2"
ip -n "$C2" addr add 10.2.0.1/24 dev "izn2-$ID"; ip -n "$C2" link set "izn2-$ID" up
ip -n "$P2" addr add 10.2.0.21/24 dev "izp2-$ID"; ip -n "$P2" link set "izp2-$ID" up
ip -n "$P2" route add default via 10.2.0.1
info "cluster1 192.168.77.1 <-> 192.168.77.2 cluster2; cluster2 10.2.0.1 <-> 10.2.0.21 pod in-ambient (no forwarding anywhere)"

step "2. cluster folders (examples/httpbin, east-west gateways moved to the veth addresses)"
cp -r "$ROOT/examples/httpbin/cluster1" "$ROOT/examples/httpbin/cluster2" "$WORK/"
for c in cluster1 cluster2; do
  sed -i -e 's/127\.0\.1\.1/192.168.77.1/g' -e 's/127\.0\.2\.1/192.168.77.2/g' "$WORK/$c/eastwest.yaml"
done
grep -q 'ambient.istio.io/redirection: enabled' "$WORK/cluster2/httpbin.yaml" || die "cluster2's in-ambient pod is not marked ambient"
grep -q 'podIP: 10.2.0.21' "$WORK/cluster2/httpbin.yaml" || die "cluster2's in-ambient pod is not at 10.2.0.21"
info "cluster2's pod httpbin/in-ambient-b86fbcb48-6rvhp: podIP 10.2.0.21, annotation ambient.istio.io/redirection: enabled"

step "3. certificates and tokens (meshpeer certs)"
M=$MESHPEER_BIN
$M certs root-ca --out "$WORK/certs/root" >/dev/null
if [ -n "$SHARED_TD" ]; then
  # Istio's multi-network model: one trust domain for every cluster. Each
  # cluster keeps its own intermediate, which the root binds to the trust
  # domain (spiffe://TD) and to the cluster (spiffe://TD/meshpeer/cluster/NAME).
  for c in cluster1 cluster2; do
    $M certs cluster $c --trust-domain "$SHARED_TD" --root "$WORK/certs/root" --out "$WORK/certs/$c" >/dev/null
    sed -i "s/^trustDomain: .*/trustDomain: $SHARED_TD/" "$WORK/$c/cluster.yaml"
    sed -i "s|gateway.istio.io/trust-domain: .*|gateway.istio.io/trust-domain: $SHARED_TD|" "$WORK/$c/eastwest.yaml"
    if command -v openssl >/dev/null; then
      info "$c's intermediate: $(openssl x509 -in "$WORK/certs/$c/ca-cert.pem" -noout -ext subjectAltName 2>/dev/null | tail -n +2 | tr -s ' \n' ' ')"
    fi
  done
  info "both clusters in trust domain $SHARED_TD (INTEROP_SHARED_TD)"
else
  $M certs cluster cluster1 --root "$WORK/certs/root" --out "$WORK/certs/cluster1" >/dev/null
  $M certs cluster cluster2 --root "$WORK/certs/root" --out "$WORK/certs/cluster2" >/dev/null
fi
$M certs token --tokens "$WORK/certs/cluster2/tokens" --namespace istio-eastwest --service-account istio-eastwest --out "$WORK/certs/cluster2/gateway.token" >/dev/null
$M certs token --tokens "$WORK/certs/cluster1/tokens" --namespace httpbin --service-account client-in-ambient --out "$WORK/certs/cluster1/ztunnel1.token" >/dev/null
$M certs token --tokens "$WORK/certs/$DEST_TD/tokens" --namespace httpbin --service-account in-ambient --out "$WORK/certs/$DEST_TD/ztunnel2.token" >/dev/null
# ztunnel sends its token file's bytes verbatim after "Bearer "
# (src/identity/auth.rs, load_token: no trim); `meshpeer certs token` ends the
# file with a newline (crates/ca/src/tokens.rs, write_token_file: writeln!),
# which is not a valid header value. Kubernetes' projected tokens have none.
# INTEROP.md, finding 0.
for t in "$WORK/certs/cluster1/ztunnel1.token" "$WORK/certs/$DEST_TD/ztunnel2.token"; do
  if [ "${INTEROP_TOKEN_AS_WRITTEN:-1}" = 1 ]; then
    cp "$t" "$t.ztunnel"
  else
    (umask 077; printf '%s' "$(cat "$t")" >"$t.ztunnel")
  fi
done
info "root + intermediates for cluster1, cluster2; tokens: cluster1 httpbin/client-in-ambient (ztunnel #1), $DEST_TD httpbin/in-ambient (ztunnel #2), cluster2 istio-eastwest/istio-eastwest (gateway)"

step "4. meshpeer controllers (peering 192.168.77.x:15012, cluster listener :15013)"
start controller1 "$C1" "$M" controller --cluster-dir "$WORK/cluster1" --cacerts "$WORK/certs/cluster1" --tokens "$WORK/certs/cluster1/tokens"
start controller2 "$C2" "$M" controller --cluster-dir "$WORK/cluster2" --cacerts "$WORK/certs/cluster2" --tokens "$WORK/certs/cluster2/tokens"
catalog_has_remote() {
  in_ns "$C1" curl -sf http://127.0.0.1:15014/v1/catalog -o "$WORK/catalog1.json" &&
    python3 - "$WORK/catalog1.json" <<'EOF'
import json, sys
svcs = json.load(open(sys.argv[1]))["catalog"]["services"]
svcs = svcs.values() if isinstance(svcs, dict) else svcs
s = [s for s in svcs if s["hostname"] == "in-ambient.httpbin.mesh.internal"]
sys.exit(0 if s and any(c["cluster"] == "cluster2" for c in s[0]["contributions"]) else 1)
EOF
}
wait_for "cluster1 sees in-ambient.httpbin.mesh.internal with cluster2's contribution" "${INTEROP_PEERING_WAIT:-60}" catalog_has_remote ||
  { show_log controller1 12; show_log controller2 12; die "peering did not sync"; }
in_ns "$C1" "$M" status --controller 127.0.0.1:15014 | sed 's/^/    /'
VIP=$(python3 - "$WORK/catalog1.json" <<'EOF'
import json, sys
svcs = json.load(open(sys.argv[1]))["catalog"]["services"]
svcs = svcs.values() if isinstance(svcs, dict) else svcs
print([s for s in svcs if s["hostname"] == "in-ambient.httpbin.mesh.internal"][0]["vip"])
EOF
)
info "cluster1's VIP for in-ambient.httpbin.mesh.internal: $VIP"

step "5. meshpeer gateway of cluster2 (192.168.77.2:15008, ambient inbound port 15008)"
start gateway2 "$C2" "$M" gateway --controller 192.168.77.2:15013 --root-cert "$WORK/certs/cluster2/root-cert.pem" \
  --token-file "$WORK/certs/cluster2/gateway.token" --cluster-name cluster2 --trust-domain "$TD2" \
  --namespace istio-eastwest --service-account istio-eastwest \
  --listen 192.168.77.2:15008 --ambient-inbound-port 15008 --metrics 127.0.0.1:15090
wait_for "gateway2 /healthz" 30 in_ns "$C2" curl -sf http://127.0.0.1:15090/healthz ||
  { show_log gateway2; die "gateway did not become healthy"; }

step "6. backend in the pod: python3 http.server on 10.2.0.21:8080"
echo "hello from cluster2's in-ambient pod" >"$WORK/www/hello.txt"
start backend "$P2" python3 -m http.server 8080 --bind 10.2.0.21 --directory "$WORK/www"
wait_for "backend" 20 in_ns "$P2" curl -sf http://10.2.0.21:8080/hello.txt || { show_log backend; die "backend did not start"; }

step "7. how the ztunnels reach meshpeer's CA"
# What ztunnel's CA client checks (src/tls/control.rs): the chain to
# CA_ROOT_CA, then the CA_ADDRESS host (or ALT_CA_HOSTNAME) against the
# certificate's DNS/IP SANs. openssl does the same check here.
if command -v openssl >/dev/null; then
  in_ns "$C2" openssl s_client -connect 192.168.77.2:15013 -alpn h2 -CAfile "$WORK/certs/root/root-cert.pem" \
    -verify_ip 192.168.77.2 </dev/null >"$WORK/sclient2.txt" 2>/dev/null || true
  info "meshpeer's cluster listener 192.168.77.2:15013: $(openssl x509 -in "$WORK/sclient2.txt" -noout -ext subjectAltName 2>/dev/null | tr -s ' \n' ' ')"
  info "checked for IP 192.168.77.2 against the shared root: $(grep -m1 'Verify return code' "$WORK/sclient2.txt" | sed 's/^ *//')"
fi
if [ "$CA_RELAY" = 1 ]; then
  python3 "$HERE/interop-ztunnel-relay.py" certs "$WORK/certs" 127.0.0.1 10.2.0.1
  start relay1 "$C1" python3 "$HERE/interop-ztunnel-relay.py" relay 127.0.0.1:15113 192.168.77.1:15013 "$WORK/certs" "$WORK/certs/root/root-cert.pem"
  if [ "$DEST_TD" = cluster1 ]; then up2=192.168.77.1:15013; else up2=192.168.77.2:15013; fi
  start relay2 "$C2" python3 "$HERE/interop-ztunnel-relay.py" relay 10.2.0.1:15113 "$up2" "$WORK/certs" "$WORK/certs/root/root-cert.pem"
  WATCH=relay1 wait_for "relay1" 20 grep -q listening "$WORK/logs/relay1.log" || die "relay1 did not start"
  WATCH=relay2 wait_for "relay2" 20 grep -q listening "$WORK/logs/relay2.log" || die "relay2 did not start"
  CA1=https://127.0.0.1:15113; CA2=https://10.2.0.1:15113; CAROOT="$WORK/certs/relay-ca.pem"
  info "TLS relays (harness only, INTEROP.md finding 1): ztunnel -> relay (cert with IP SAN) -> meshpeer cluster listener (chain to the shared root)"
else
  CA1=https://192.168.77.1:15013
  if [ "$DEST_TD" = cluster1 ]; then die "INTEROP_DEST_TD=cluster1 needs INTEROP_CA_RELAY=1 (the pod cannot reach cluster1)"; fi
  CA2=https://192.168.77.2:15013; CAROOT="$WORK/certs/root/root-cert.pem"
  info "direct: ztunnel -> meshpeer cluster listener"
fi
info "ztunnel #1 CA_ADDRESS=$CA1, ztunnel #2 CA_ADDRESS=$CA2, CA_ROOT_CA=$CAROOT"

step "8. ztunnel configurations (LOCAL_XDS_PATH)"
SAN="spiffe://$DTD/ns/httpbin/sa/in-ambient"
cat >"$WORK/ztunnel1.yaml" <<EOF
# cluster1's view, as istiod would push it from meshpeer's ServiceEntry
workloads:
- uid: cluster1//v1/Pod/httpbin/client-in-ambient-5c64bb49cd-w3dmw
  name: client-in-ambient-5c64bb49cd-w3dmw
  namespace: httpbin
  serviceAccount: client-in-ambient
  trustDomain: $TD1
  workloadIps: ["10.1.1.9"]
  protocol: HBONE
  network: cluster1
  clusterId: cluster1
  node: cluster1-node-b
  services: {}
# the remote endpoint: no address, on network cluster2, behind its gateway
- uid: cluster2//v1/Pod/httpbin/in-ambient-b86fbcb48-6rvhp
  name: in-ambient-b86fbcb48-6rvhp
  namespace: httpbin
  serviceAccount: in-ambient
  trustDomain: $DTD
  workloadIps: []
  protocol: HBONE
  network: cluster2
  clusterId: cluster2
  networkGateway:
    destination: cluster2/192.168.77.2
    hboneMtlsPort: 15008
  services:
    "httpbin/in-ambient.httpbin.mesh.internal":
      8000: 8080
# cluster2's east-west gateway (meshpeer's), the outer tunnel's peer
- uid: cluster2//v1/Pod/istio-eastwest/istio-eastwest
  name: istio-eastwest
  namespace: istio-eastwest
  serviceAccount: istio-eastwest
  trustDomain: $TD2
  workloadIps: ["192.168.77.2"]
  protocol: HBONE
  network: cluster2
  clusterId: cluster2
  services: {}
services:
- name: in-ambient
  namespace: httpbin
  hostname: in-ambient.httpbin.mesh.internal
  vips: ["cluster1/$VIP"]
  ports:
    8000: 8080
  subjectAltNames: ["$SAN"]
EOF
cat >"$WORK/ztunnel2.yaml" <<EOF
# the destination pod's own view (ztunnel #2 in dedicated mode)
workloads:
- uid: cluster2//v1/Pod/httpbin/in-ambient-b86fbcb48-6rvhp
  name: in-ambient-b86fbcb48-6rvhp
  namespace: httpbin
  serviceAccount: in-ambient
  trustDomain: $DTD
  workloadIps: ["10.2.0.21"]
  protocol: HBONE
  network: cluster2
  clusterId: cluster2
  node: cluster2-node-a
  services:
    "httpbin/in-ambient.httpbin.mesh.internal":
      8000: 8080
services:
- name: in-ambient
  namespace: httpbin
  hostname: in-ambient.httpbin.mesh.internal
  vips: []
  ports:
    8000: 8080
  subjectAltNames: ["$SAN"]
EOF
info "ztunnel #1: $WORK/ztunnel1.yaml (VIP cluster1/$VIP, subjectAltNames $SAN, gateway cluster2/192.168.77.2:15008)"
info "ztunnel #2: $WORK/ztunnel2.yaml (workload 10.2.0.21, identity $SAN)"

step "9. ztunnels (PROXY_MODE=dedicated, no istiod: XDS_ADDRESS empty)"
ztunnel_env() { # NAME CA TOKEN CFG WORKLOAD NETWORK CLUSTER
  echo env RUST_LOG="${ZTUNNEL_LOG:-info}" PROXY_MODE=dedicated PROXY_WORKLOAD_INFO="$5" \
    LOCAL_XDS_PATH="$4" XDS_ADDRESS= CA_ADDRESS="$2" CA_ROOT_CA="$CAROOT" AUTH_TOKEN="$3" \
    NETWORK="$6" CLUSTER_ID="$7" ENABLE_ORIG_SRC=false UNSTABLE_ENABLE_SOCKS5=true
}
# shellcheck disable=SC2046
start ztunnel2 "$P2" $(ztunnel_env z2 "$CA2" "$WORK/certs/$DEST_TD/ztunnel2.token.ztunnel" "$WORK/ztunnel2.yaml" \
  httpbin/in-ambient-b86fbcb48-6rvhp/in-ambient cluster2 cluster2) "$ZTUNNEL_BIN"
# shellcheck disable=SC2046
start ztunnel1 "$C1" $(ztunnel_env z1 "$CA1" "$WORK/certs/cluster1/ztunnel1.token.ztunnel" "$WORK/ztunnel1.yaml" \
  httpbin/client-in-ambient-5c64bb49cd-w3dmw/client-in-ambient cluster1 cluster1) "$ZTUNNEL_BIN"
ok=1
# In dedicated mode ztunnel asks for its certificate on first use (no
# prefetch: src/cert_fetcher.rs, new). A TLS ClientHello to its own
# inbound 15008 makes it fetch the workload's certificate now.
has_cert() {
  in_ns "$1" curl -sk --max-time 3 https://127.0.0.1:15008/ >/dev/null 2>&1 || true
  local dump
  dump=$(in_ns "$1" curl -sf http://localhost:15000/config_dump) || return 1
  python3 -c 'import json,sys; sys.exit(0 if any(c.get("state") == "Available" for c in json.loads(sys.stdin.read()).get("certificates", [])) else 1)' <<<"$dump"
}
WATCH=ztunnel2
wait_for "ztunnel #2 ready (15021/healthz/ready)" 60 in_ns "$P2" curl -sf http://127.0.0.1:15021/healthz/ready || ok=0
wait_for "ztunnel #2 holds a certificate (CreateCertificate at $CA2)" 30 has_cert "$P2" || ok=0
WATCH=ztunnel1
wait_for "ztunnel #1 ready (15021/healthz/ready)" 60 in_ns "$C1" curl -sf http://127.0.0.1:15021/healthz/ready || ok=0
wait_for "ztunnel #1 holds a certificate (CreateCertificate at $CA1)" 30 has_cert "$C1" || ok=0
WATCH=
for z in "ztunnel1 $C1" "ztunnel2 $P2"; do
  set -- $z
  in_ns "$2" curl -sf http://localhost:15000/config_dump -o "$WORK/$1.config_dump.json" || true
  python3 - "$WORK/$1.config_dump.json" "$1" <<'EOF' || true
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception as e:
    print(f"    {sys.argv[2]}: no config dump ({e})"); sys.exit(0)
for c in d.get("certificates", []):
    print(f"    {sys.argv[2]}: certificate {c.get('identity')} state={c.get('state')}")
    for i, cc in enumerate(c.get("certChain", [])):
        print(f"        chain[{i}] serial={cc.get('serialNumber')} valid {cc.get('validFrom')} .. {cc.get('expirationTime')}")
EOF
done
if [ $ok = 0 ]; then
  for z in ztunnel1 ztunnel2; do
    echo "--- $z: certificate fetches (last 3)"
    grep 'identity::manager' "$WORK/logs/$z.log" | tail -n 3 | sed 's/^/    /' || true
  done
  for c in controller1 controller2; do
    echo "--- $c: cluster listener and CA (last 3)"
    grep 'meshpeer_ca' "$WORK/logs/$c.log" | grep -v 'tokens file loaded' | tail -n 3 | sed 's/^/    /' || true
  done
  [ "$CA_RELAY" = 1 ] && { show_log relay1 5; show_log relay2 5; }
  for n in "$C1 controller1" "$C2 controller2"; do
    set -- $n
    in_ns "$1" curl -s http://127.0.0.1:15014/metrics | grep -v '^#' | grep 'ca_' | grep -v ' 0$' | sed "s/^/    $2 metric /" || true
  done
  die "a ztunnel did not get its certificate from meshpeer's controller (see INTEROP.md)"
fi
[ "$CA_RELAY" = 1 ] && { show_log relay1 3; show_log relay2 3; }

step "10. request: cluster1 curl -> ztunnel #1 (socks5 127.0.0.1:15080) -> $VIP:8000"
set +e
in_ns "$C1" curl -sS --max-time 15 --socks5 127.0.0.1:15080 "http://$VIP:8000/hello.txt" -o "$WORK/answer.txt" -w '%{http_code}\n' >"$WORK/curl.out" 2>&1
curl_rc=$?
set -e
info "curl exit $curl_rc, $(cat "$WORK/curl.out")"
[ -s "$WORK/answer.txt" ] && info "answer: $(cat "$WORK/answer.txt")"
sleep 1

step "11. evidence"
show_log gateway2 12
show_log ztunnel1 12
show_log ztunnel2 12
show_log backend 3
in_ns "$C2" curl -s http://127.0.0.1:15090/metrics | grep -v '^#' | grep -i 'tunnel\|refus\|ambient' | head -20 | sed 's/^/    gateway2 metric /' || true
in_ns "$P2" curl -s http://127.0.0.1:15020/metrics | grep -v '^#' | grep 'istio_tcp_connections_opened_total' | sed 's/^/    ztunnel2 metric /' || true

# What this run changed from meshpeer as it is (INTEROP.md, findings).
workarounds() {
  [ "${INTEROP_TOKEN_AS_WRITTEN:-1}" = 1 ] || info "harness workaround: ztunnel's token files without meshpeer's trailing newline (finding 0)"
  [ "$CA_RELAY" = 1 ] && info "harness workaround: TLS relay in front of meshpeer's CA endpoint (finding 1)"
  [ "$DEST_TD" = cluster2 ] || info "diagnostic: the destination pod holds a $DEST_TD identity, not cluster2's (finding 2)"
  return 0
}
if [ $curl_rc -eq 0 ] && grep -q "hello from cluster2" "$WORK/answer.txt" 2>/dev/null; then
  src="spiffe://$TD1/ns/httpbin/sa/client-in-ambient"
  if grep -q "src.identity=\"$src\"" "$WORK/logs/ztunnel2.log" ||
     in_ns "$P2" curl -s http://127.0.0.1:15020/metrics | grep -c "source_principal=\"$src\"" >/dev/null; then
    step "PASS: the backend in cluster2 answered through ztunnel -> meshpeer gateway -> ztunnel; ztunnel #2 saw the source identity $src"
    workarounds
    exit 0
  fi
  die "the request went through, but ztunnel #2 does not show the source identity $src"
fi
workarounds
die "the request from cluster1 did not reach the backend in cluster2 (see the logs above and INTEROP.md)"
