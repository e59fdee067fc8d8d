#!/usr/bin/env bash
# Build the libFuzzer targets with clang (ASan + UBSan + libFuzzer) and run
# each one for a bounded time. `make test` replays the seed corpora with any
# compiler; this script looks for new inputs.
#
# Usage: scripts/fuzz.sh [target...]     (default: every target)
#   targets: routes integ_reply jwt netfilter proto v1 http utf8 (tests/fuzz/CMakeLists.txt)
# Environment:
#   FUZZ_SECONDS    seconds per target (default 60)
#   FUZZ_BUILD_DIR  build directory (default <repo>/build-fuzz)
#   FUZZ_JOBS       build parallelism (default 2)
#   FUZZ_MERGE=1    merge inputs that add coverage into tests/fuzz/corpus/
# Working corpora grow in $FUZZ_BUILD_DIR/fuzz-corpus/<target>/ (the first
# corpus argument, where libFuzzer writes); the committed seeds are read
# from tests/fuzz/corpus/<target>/. A crash leaves its input in
# $FUZZ_BUILD_DIR/fuzz-artifacts/ and makes the script exit 1; reproduce it
# with the replay binary: $FUZZ_BUILD_DIR/fuzz/fuzz_<target>_replay <file>.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${FUZZ_BUILD_DIR:-$root/build-fuzz}
secs=${FUZZ_SECONDS:-60}
jobs=${FUZZ_JOBS:-2}

case "${1:-}" in
-h | --help)
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
  exit 0
  ;;
esac
if ! [[ $secs =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
  echo "fuzz.sh: FUZZ_SECONDS must be a positive integer" >&2
  exit 2
fi
if ! command -v clang >/dev/null; then
  echo "fuzz.sh: clang is needed for libFuzzer (apt-get install clang)" >&2
  exit 2
fi

# Everything is instrumented, not just the harnesses: coverage guidance and
# the sanitizers must see the code under test (edge_core, dw_proto).
cmake -S "$root" -B "$build" \
  -DCMAKE_C_COMPILER=clang \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_FLAGS=-fsanitize=fuzzer-no-link \
  -DDW_SANITIZE=address,undefined \
  -DDW_FUZZ=ON -DDW_BUILD_TESTS=ON -DDW_WERROR=OFF >/dev/null

if ! cmake --build "$build" --target help | grep '\bfuzz_all\b' >/dev/null; then
  echo "fuzz.sh: no fuzz targets: tests/CMakeLists.txt must add_subdirectory(fuzz)" >&2
  exit 2
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for d in "$root"/tests/fuzz/corpus/*/; do
    targets+=("$(basename "$d")")
  done
fi

build_targets=()
for t in "${targets[@]}"; do
  build_targets+=(--target "fuzz_$t" --target "fuzz_${t}_replay")
done
cmake --build "$build" -j"$jobs" "${build_targets[@]}"

export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
artifacts=$build/fuzz-artifacts
mkdir -p "$artifacts"
failed=()
for t in "${targets[@]}"; do
  bin=$build/fuzz/fuzz_$t
  seeds=$root/tests/fuzz/corpus/$t
  work=$build/fuzz-corpus/$t
  log=$build/fuzz-$t.log
  mkdir -p "$work"
  echo "== fuzz_$t for ${secs}s (log: $log)"
  if "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$artifacts/$t-" "$work" "$seeds" >"$log" 2>&1; then
    grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || true
    echo "   corpus: $(find "$work" -type f | wc -l) inputs in $work"
    if [ "${FUZZ_MERGE:-0}" = 1 ]; then
      "$bin" -merge=1 "$seeds" "$work" >>"$log" 2>&1
      echo "   merged into $seeds: $(find "$seeds" -type f | wc -l) inputs"
    fi
  else
    echo "   FAILED: see $log and $artifacts/"
    grep -E 'ERROR|SUMMARY|runtime error|Test unit written' "$log" | head -5 || true
    failed+=("$t")
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: failures in: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets, ${secs}s each, no crash"
