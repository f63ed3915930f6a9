#!/usr/bin/env bash
# Per-program connect cost of kernel-native mode at several config sizes,
# without the full benchmark (issue 9: "connect overhead flat from 10 to
# 10,000 services").
#
#   sudo bench/prog_cost.sh [SIZES]        # SIZES default 10,10000,10
#
# Starts the release kmesh-daemon (kernel-native) on a cgroup, a netns (only
# `lo` up) and a bpffs dir made here, the bench's nginx backend, and
# runs `kmesh-traffic connect-loop` to the VIP (nginx behind it) from the cgroup; with
# kernel.bpf_stats_enabled=1 it reports run_time_ns per connect and per run
# of each attach type's programs (bench.py --prog-cost). Each size is applied
# to the same daemon in turn; ending on the first size again shows whether
# a difference comes from the config or from state left by earlier runs.
# PROG_COST_COUNT (default 20000) connects per round, PROG_COST_ROUNDS
# (default 3) rounds; PROG_COST_MONITORING=0 switches connection metrics off
# first (POST /monitoring?enable=false). A trap removes everything and restores the sysctl.
set -euo pipefail

SIZES="${1:-10,10000,10}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
[ "$(id -u)" = 0 ] || { echo "run as root (eBPF, netns, cgroups)" >&2; exit 1; }
command -v bpftool >/dev/null || { echo "needs bpftool (Debian bpftool)" >&2; exit 1; }

TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
if [ -z "${KMESH_BIN_DIR:-}" ]; then
    (cd "$ROOT" && cargo build --release --bin kmesh-daemon --bin kmesh-traffic)
    KMESH_BIN_DIR="$TARGET/release"
fi

ID="kmprogcost-$$"
NS="$ID"
CG="/sys/fs/cgroup/unified/$ID"
[ -d /sys/fs/cgroup/unified ] || CG="/sys/fs/cgroup/$ID"
BPFD="/sys/fs/bpf/$ID"
TMP="$(mktemp -d "/tmp/$ID.XXXXXX")"
BPF_STATS=/proc/sys/kernel/bpf_stats_enabled
BPF_STATS_SAVED="$(cat "$BPF_STATS" 2>/dev/null || echo 0)"

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    # Only the processes bench.py started (their PIDs are in $TMP/pids).
    if [ -f "$TMP/pids" ]; then
        while read -r pid; do [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; done <"$TMP/pids"
        for _ in $(seq 50); do
            alive=0
            while read -r pid; do [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && alive=1; done <"$TMP/pids"
            [ $alive = 0 ] && break
            sleep 0.1
        done
        while read -r pid; do [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null; done <"$TMP/pids"
    fi
    if [ -d "$BPFD" ]; then
        "$KMESH_BIN_DIR/kmesh-daemon" uninstall --bpf-fs-path "$BPFD" --cgroup2-path "$CG" >/dev/null 2>&1
        rm -rf "$BPFD"
    fi
    if [ -d "$CG" ]; then
        for _ in $(seq 50); do rmdir "$CG" 2>/dev/null && break; sleep 0.1; done
    fi
    ip netns delete "$NS" 2>/dev/null
    [ -w "$BPF_STATS" ] && echo "$BPF_STATS_SAVED" >"$BPF_STATS"
    [ $rc = 0 ] || tail -n 20 "$TMP/daemon.log" 2>/dev/null >&2
    rm -rf "$TMP"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ip netns add "$NS"
ip -n "$NS" link set lo up
nsenter --net="/var/run/netns/$NS" sysctl -q -w net.ipv4.ip_local_port_range="1024 65000" \
    net.core.somaxconn=4096 >/dev/null
mkdir "$CG" "$BPFD"
: >"$TMP/pids"

python3 "$ROOT/bench/bench.py" --ns "$NS" --cgroup "$CG" --bpffs "$BPFD" --tmp "$TMP" \
    --bin-dir "$KMESH_BIN_DIR" --out "$TMP/unused.md" --prog-cost "$SIZES" \
    --prog-cost-count "${PROG_COST_COUNT:-20000}" --prog-cost-rounds "${PROG_COST_ROUNDS:-3}" \
    $([ "${PROG_COST_MONITORING:-1}" = 0 ] && echo --prog-cost-no-monitoring)
