#!/usr/bin/env bash
# Both appliances in a network namespace, A's client address on a veth
# pair's inner end with [io] backend = BACKEND, the harness in this
# namespace driving A across the pair (presence-load --target). Prints one
# line: the harness's figures and A's and B's CPU per query (from
# /proc/PID/stat over the run). Needs root.
#
#   bench/scripts/veth-appliance.sh BACKEND RATE SECONDS [presence-load args…]
#
# The networks come from an earlier `presence-load --spawn` run with the
# default population ($TMPDIR/presence-load-1000000x1000000), copied
# without their charge records. Build first:
#   cargo build --release -p presence-engine --bin presence-gw -p presence-bench --bin presence-load
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=veth-lab.sh
source bench/scripts/veth-lab.sh
prefix=10.77.1
backend=${1:?backend}
rate=${2:?rate}
seconds=${3:?seconds}
shift 3
source_networks=${TMPDIR:-/tmp}/presence-load-1000000x1000000
[ -f "$source_networks/population.txt" ] || {
    echo "run presence-load --spawn once first to generate $source_networks" >&2
    exit 2
}
ns=pgw-app-$$
outer=pgwao$$
inner=pgwai$$
work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    veth_lab_down
    rm -rf "$work"
}
trap cleanup EXIT
veth_lab_up
for n in o2.gb t-mobile.de; do
    mkdir -p "$work/$n/cdr"
    cp -r "$source_networks/$n"/{gw.toml,hss.csv,peers,pki,subscribers.csv} "$work/$n/"
done
cp "$source_networks/population.txt" "$work/"
ip netns exec "$ns" target/release/presence-gw run --config "$work/t-mobile.de/gw.toml" \
    >"$work/b.out" 2>"$work/b.log" &
b_pid=$!
pids+=("$b_pid")
for _ in $(seq 1 600); do grep -q border= "$work/b.out" && break; sleep 0.1; done
b_border=$(grep -o 'border=[^ ]*' "$work/b.out" | cut -d= -f2)
sed -i -e "s|^client = .*|client = \"10.77.1.2:7000\"|" \
    -e "s|^backend = .*|backend = \"$backend\"|" \
    -e "s|^address = .*|address = \"$b_border\"|" "$work/o2.gb/gw.toml"
ip netns exec "$ns" target/release/presence-gw run --config "$work/o2.gb/gw.toml" \
    >"$work/a.out" 2>"$work/a.log" &
a_pid=$!
pids+=("$a_pid")
for _ in $(seq 1 600); do grep -q client= "$work/a.out" && break; sleep 0.1; done
sleep 2
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
a0=$(cpu "$a_pid")
b0=$(cpu "$b_pid")
target/release/presence-load --target 10.77.1.2:7000 --networks "$work" --rate "$rate" \
    --duration "$seconds" --json "$@" 2>/dev/null | tail -1 >"$work/load.json" || true
a1=$(cpu "$a_pid")
b1=$(cpu "$b_pid")
ticks=$(getconf CLK_TCK)
python3 - "$work/load.json" "$backend" $((a1 - a0)) $((b1 - b0)) "$ticks" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
backend, a, b, ticks = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
n = max(j["answered"], 1)
us = lambda t: round(t * 1e6 / ticks / n, 2)
print(json.dumps({"backend": backend, "answered": j["answered"], "lost": j["lost"],
    "p50_us": j["p50_us"], "p99_us": j["p99_us"], "p999_us": j["p999_us"],
    "max_gap_ms": j["max_gap_ms"], "cpu_us_per_query": {"A": us(a), "B": us(b),
    "harness": j["cpu_us_per_query"].get("harness")}}))
PY
grep -h "XDP program\|not available" "$work/a.log" | sed 's/\x1b\[[0-9;]*m//g' >&2 || true
