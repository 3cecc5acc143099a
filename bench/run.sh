#!/usr/bin/env bash
# Runs the benchmarks against a throwaway PostgreSQL cluster on loopback and prints one JSON line
# per figure. Usage: bench/run.sh [catch2 filter, default "[.bench]"]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/dev" build >/dev/null
if ! command -v wrk >/dev/null 2>&1; then  # the hot-path benchmark's load generator
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
build_dir=${TOKEND_BUILD_DIR:-$root/build/release}
pgdir=$(mktemp -d /tmp/tokend-bench-pg.XXXXXX)
trap '"$root/scripts/pg" destroy "$pgdir" >/dev/null 2>&1 || true' EXIT
"$root/scripts/pg" init "$pgdir" >/dev/null
"$root/scripts/pg" start "$pgdir"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -r)"
TOKEND_TEST_PGHOST="$pgdir" "$build_dir/bench/bench_tokend" "${1:-[.bench]}" | grep '^{'
