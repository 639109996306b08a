#!/usr/bin/env bash
# SPEC B7: runs every property test over outside input (the cluster-folder
# reader, peering messages, the DNS handler, the HBONE request head, the
# feed client) for CASES cases each (default 100,000), release build, and
# prints a table of cases per second. Each target checks: no panic,
# consistent results, allocations bounded by the input.
#
#   scripts/fuzz.sh [CASES]
#
# FUZZ_ONLY=REGEX runs only the targets whose name matches, FUZZ_SKIP=REGEX
# all but those. A failing
# target prints its smallest failing input; the script then exits 1.
set -uo pipefail
cd "$(dirname "$0")/.."

CASES="${1:-100000}"

# package  test-binary  test
TARGETS=(
  "meshpeer-store      b7_folder   b7_folder_arbitrary_text_reads_as_its_documents_do"
  "meshpeer-store      b7_folder   b7_folder_arbitrary_objects_on_a_real_folder"
  "meshpeer-peering    b7_peering  b7_peering_arbitrary_deltas_apply_or_are_refused_whole"
  "meshpeer-peering    b7_peering  b7_peering_arbitrary_bytes_decoded_as_the_wire_does"
  "meshpeer-dataplane  b7_dns      b7_dns_arbitrary_query_bytes"
  "meshpeer-dataplane  b7_dns      b7_dns_arbitrary_structured_messages"
  "meshpeer-dataplane  b7_hbone    b7_hbone_arbitrary_request_heads"
  "meshpeer-dataplane  b7_hbone    b7_hbone_gateway_decisions_on_arbitrary_heads"
  "meshpeer-dataplane  b7_feed     b7_feed_lines_do_not_depend_on_chunking_and_stay_within_the_limit"
  "meshpeer-dataplane  b7_feed     b7_feed_arbitrary_structured_lines_apply_consistently"
  "meshpeer-dataplane  b7_feed     b7_feed_arbitrary_bytes_apply_or_are_refused"
)

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(uname -sr)"
echo "rustc:   $(rustc --version)"
echo "command: ${FUZZ_ONLY:+FUZZ_ONLY=$FUZZ_ONLY }${FUZZ_SKIP:+FUZZ_SKIP=$FUZZ_SKIP }scripts/fuzz.sh ${CASES}"

skip() {
  [[ -n "${FUZZ_ONLY:-}" && ! "$1" =~ ${FUZZ_ONLY} ]] && return 0
  [[ -n "${FUZZ_SKIP:-}" && "$1" =~ ${FUZZ_SKIP} ]] && return 0
  return 1
}

# Build first, so that the figures are the cases' alone.
declare -A BUILT=()
for t in "${TARGETS[@]}"; do
  read -r pkg bin name <<<"$t"
  skip "$name" && continue
  [[ -n "${BUILT[$pkg/$bin]:-}" ]] && continue
  cargo test --quiet --release -p "$pkg" --test "$bin" --no-run 2>&1 | grep -v '^ *Executable' >&2 || true
  BUILT[$pkg/$bin]=1
done

echo
printf '%-70s %9s %9s %10s\n' "target" "cases" "seconds" "cases/s"
failed=0
for t in "${TARGETS[@]}"; do
  read -r pkg bin name <<<"$t"
  skip "$name" && continue
  log="$(mktemp)"
  start=$(date +%s.%N)
  PROPTEST_CASES="$CASES" cargo test --quiet --release -p "$pkg" --test "$bin" -- \
    --exact "$name" --test-threads=1 >"$log" 2>&1
  rc=$?
  end=$(date +%s.%N)
  # The test's own time (libtest's "finished in"), else the wall clock.
  secs=$(sed -n 's/.*finished in \([0-9.]*\)s.*/\1/p' "$log" | tail -1)
  [[ -z "$secs" ]] && secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')
  if [[ $rc -eq 0 ]]; then
    rate=$(awk -v n="$CASES" -v s="$secs" 'BEGIN { if (s > 0) printf "%d", n / s; else print "-" }')
    printf '%-70s %9d %9.2f %10s\n' "$name" "$CASES" "$secs" "$rate"
  else
    printf '%-70s %9d %9.2f %10s\n' "$name" "$CASES" "$secs" "FAILED"
    grep -E 'Test failed|panicked' "$log" | head -5 >&2
    sed -n '/minimal failing input/,/^test result/p' "$log" | head -60 >&2
    failed=1
  fi
  rm -f "$log"
done
exit "$failed"
