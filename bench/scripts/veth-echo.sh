#!/usr/bin/env bash
# The echo ceiling of one IO backend across a veth pair: presence-echo in a
# network namespace of its own (its interface the pair's inner end), the
# harness (presence-load --ceiling-at) in this one. Needs root (netns, XDP).
#
#   bench/scripts/veth-echo.sh BACKEND [--no-gso] [presence-load args…]
#
# BACKEND: mmsg, gro, uring or xdp. --no-gso makes both sides send every
# datagram as a packet of its own, as separate devices do. ECHO_ARGS adds
# arguments to presence-echo (ECHO_ARGS="--xdp-mode generic"). Prints the
# harness's JSON line, then the echo's (datagrams echoed, its CPU per
# datagram, AF_XDP counts). Build first:
#   cargo build --release -p presence-bench --bin presence-load --bin presence-echo
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=veth-lab.sh
source bench/scripts/veth-lab.sh
prefix=10.77.0
backend=${1:?backend}
shift
read -r -a echo_args <<<"${ECHO_ARGS:-}"
load_args=()
if [ "${1:-}" = "--no-gso" ]; then
    echo_args+=(--no-gso)
    load_args+=(--no-gso)
    shift
fi
ns=pgw-echo-$$
outer=pgweo$$
inner=pgwei$$
echo_pid=
cleanup() {
    [ -n "$echo_pid" ] && kill -INT "$echo_pid" 2>/dev/null
    veth_lab_down
}
trap cleanup EXIT
veth_lab_up
out=$(mktemp)
ip netns exec "$ns" target/release/presence-echo --listen 10.77.0.2:7000 \
    --io-backend "$backend" "${echo_args[@]}" >"$out" &
echo_pid=$!
for _ in $(seq 1 50); do grep -q listening "$out" && break; sleep 0.1; done
target/release/presence-load --ceiling-at 10.77.0.2:7000 --per-datagram 1 --json \
    "${load_args[@]}" "$@" 2>/dev/null | tail -1 || true
kill -INT "$echo_pid"
wait "$echo_pid" || true
echo_pid=
tail -1 "$out"
rm -f "$out"
