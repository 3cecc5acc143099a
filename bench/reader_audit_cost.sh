#!/usr/bin/env bash
# Instructions per cached GET /v1/tokens with and without the reader audit, counted by
# callgrind (exact and repeatable, whatever else the machine does). tokend runs under callgrind
# with one event-loop thread and the defaults otherwise (access log on, level info); a keep-alive
# client sends N1 and then, in a second run, N2 requests; the difference of the two totals over
# N2 - N1 is the cost of one request, start-up and shutdown cancelling out. Only instructions run
# by the event loop's coroutines are collected (Asio resumes every coroutine frame from its
# awaitable thread's pump: the session's parse, authenticate, cache lookup, reader note,
# response, metrics and access-log line): the listener's heartbeat thread, whose work depends
# on wall time, would otherwise add noise larger than the difference being measured. The
# scheduler and webhook worker are off; the other timers fire once per 30-60 s, alike in both
# runs.
# Usage: bench/reader_audit_cost.sh [N1 N2]   (default 500 2500)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$root/scripts/dev" build >/dev/null
command -v valgrind >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
build_dir=${TOKEND_BUILD_DIR:-$root/build/release}
n1=${1:-500}
n2=${2:-2500}
work=$(mktemp -d /tmp/tokend-callgrind.XXXXXX)
chmod 0755 "$work"
pgdir="$work/pg"
cleanup() {
  [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true
  "$root/scripts/pg" destroy "$pgdir" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
"$root/scripts/pg" init "$pgdir" >/dev/null
"$root/scripts/pg" start "$pgdir"
psql "$("$root/scripts/pg" url "$pgdir" postgres)" -qc "CREATE DATABASE tokend"
export TOKEND_DATABASE_URL=$("$root/scripts/pg" url "$pgdir" tokend)
export TOKEND_MASTER_KEYS="b1:$(openssl rand -base64 32)"
export TOKEND_ADMIN_TOKEN=$(openssl rand -hex 24)
export TOKEND_LISTEN=127.0.0.1:0 TOKEND_THREADS=1 TOKEND_SCHEDULER=off TOKEND_WEBHOOKS=off
export TOKEND_ALLOW_INSECURE_PROVIDER_URLS=1
"$build_dir/tokend" migrate >/dev/null 2>&1

# Starts tokend (optionally under callgrind) logging to $1; sets pid and addr.
start() {
  local log=$1
  shift
  "$@" "$build_dir/tokend" serve >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 1 600); do
    addr=$(grep -o '"address":"[^"]*"' "$log" 2>/dev/null | head -1 | cut -d'"' -f4 || true)
    [ -n "$addr" ] && return 0
    sleep 0.1
  done
  echo "tokend did not start" >&2
  cat "$log" >&2
  exit 1
}
stop() {
  kill -TERM "$pid"
  wait "$pid" || true
  pid=
}

# Seed: a tenant, a key, a provider, one connection with a valid token.
start "$work/seed.log"
api() { curl -sf -X "$1" "http://$addr$2" -H "Authorization: Bearer $3" -d "${4:-}"; }
api POST /v1/tenants "$TOKEND_ADMIN_TOKEN" '{"id":"acme","name":"Acme"}' >/dev/null
key=$(api POST /v1/tenants/acme/api-keys "$TOKEND_ADMIN_TOKEN" \
  '{"name":"bench","scopes":["tokens:read","connections:read","connections:write"]}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
api PUT /v1/providers/p "$key" \
  '{"type":"oauth2","client_id":"c","client_secret":"s","token_url":"http://127.0.0.1:9/t"}' >/dev/null
api PUT /v1/connections/c1 "$key" \
  '{"provider":"p","access_token":"at-0123456789012345678901234567890123456789","refresh_token":"r","expires_in":86400}' >/dev/null
stop

# N keep-alive GETs of the cached token (the first one fills the cache).
client() {
  python3 - "$addr" "$key" "$1" <<'PY'
import http.client, sys
host, port = sys.argv[1].rsplit(":", 1)
c = http.client.HTTPConnection(host, int(port))
for _ in range(int(sys.argv[3])):
    c.request("GET", "/v1/tokens/c1", headers={"Authorization": "Bearer " + sys.argv[2]})
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
}

total_ir() {  # the "totals:" line of a callgrind output file
  awk '/^totals:/{print $2}' "$1"
}

declare -A per_request
for audit in off on; do
  declare -A ir=()
  for n in "$n1" "$n2"; do
    out="$work/cg-$audit-$n.out"
    TOKEND_READER_AUDIT=$audit start "$work/cg-$audit-$n.log" \
      valgrind --tool=callgrind --callgrind-out-file="$out" -q \
      --collect-atstart=no --toggle-collect='*awaitable_thread*::pump*' 
    client "$n"
    stop
    ir[$n]=$(total_ir "$out")
  done
  per_request[$audit]=$(( (ir[$n2] - ir[$n1]) / (n2 - n1) ))
  echo "{\"bench\":\"reader_audit_cost\",\"reader_audit\":\"$audit\",\"requests\":[$n1,$n2],\"ir_totals\":[${ir[$n1]},${ir[$n2]}],\"ir_per_request\":${per_request[$audit]}}"
done
python3 -c "print('{\"bench\":\"reader_audit_cost\",\"extra_percent\":%.2f}' % ((${per_request[on]} - ${per_request[off]}) * 100.0 / ${per_request[off]}))"
