#!/usr/bin/env bash
# kmesh quickstart: build, run the daemon on examples/quickstart.yaml, and
# watch two VIPs being load-balanced by the kernel at connect() time.
#
#   sudo bash scripts/quickstart.sh            # run, show, clean up
#   sudo bash scripts/quickstart.sh --keep     # run, show, leave it running
#   sudo bash scripts/quickstart.sh --cleanup ID   # remove what --keep left
#
# What it sets up (all named kmesh-qs-<pid of this script>, so runs never
# collide, and all removed again on exit, Ctrl-C or error):
#
#   netns   kmesh-qs-ID            only `lo` up; the backends 127.0.0.2-6:8080
#                                  and the client live here. A VIP has no
#                                  route in it, so a connect that kmesh does
#                                  not steer fails with ENETUNREACH and no
#                                  packet ever leaves the machine.
#   cgroup  <cgroup2>/kmesh-qs-ID  the daemon attaches its programs here; the
#                                  client moves itself in before connecting.
#   bpffs   /sys/fs/bpf/kmesh-qs-ID  the daemon's pins.
#   state   /run/kmesh-qs-ID       logs and the state --cleanup reads.
#
# Needs root, Linux >= 5.10 with BTF, Debian-like userland, Rust (rustup).
set -euo pipefail

usage() {
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
}

KEEP=0
CLEANUP_ID=""
while [ $# -gt 0 ]; do
    case "$1" in
        --keep) KEEP=1 ;;
        --cleanup)
            [ $# -ge 2 ] || { usage >&2; exit 2; }
            CLEANUP_ID="$2"
            shift
            ;;
        -h | --help) usage; exit 0 ;;
        *) echo "quickstart: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

REPO="$(cd "$(dirname "$0")/.." && pwd)"
# sbin holds ip and bpftool; sudo and non-login shells may lack it.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

# Output helpers: sections in bold when stdout is a terminal.
if [ -t 1 ]; then B=$'\e[1m' N=$'\e[0m'; else B='' N=''; fi
section() { printf '\n%s== %s%s\n' "$B" "$*" "$N"; }
say() { echo "quickstart: $*"; }
die() { echo "quickstart: ERROR: $*" >&2; exit 1; }

# The script's own stdout and stderr, for cleanup (see there).
exec 3>&1 4>&2

[ "$(id -u)" -eq 0 ] || die "run as root: sudo bash scripts/quickstart.sh"

# ---------------------------------------------------------------------------
# State: everything this run creates, so cleanup can undo exactly that.
# ---------------------------------------------------------------------------

ID=$$
NAME="kmesh-qs-$ID"
STATE_DIR="/run/$NAME"
NETNS=""
CGROUP=""
BPF_DIR=""
BIN=""
ADMIN=""
DAEMON_PID=""
BACKEND_PIDS=""
SETUP_DONE=0

save_state() {
    mkdir -p "$STATE_DIR"
    {
        printf 'NAME=%q\n' "$NAME"
        printf 'NETNS=%q\nCGROUP=%q\nBPF_DIR=%q\nBIN=%q\nADMIN=%q\n' \
            "$NETNS" "$CGROUP" "$BPF_DIR" "$BIN" "$ADMIN"
        printf 'DAEMON_PID=%q\nBACKEND_PIDS=%q\n' "$DAEMON_PID" "$BACKEND_PIDS"
    } >"$STATE_DIR/state"
}

# True if PID runs and is not a zombie.
alive() {
    local st
    [ -r "/proc/$1/stat" ] || return 1
    st="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)"
    [ -n "$st" ] && [ "$st" != Z ]
}

# stop_pid PID WHAT GRACE_SECONDS: SIGTERM, then SIGKILL after the grace
# period. Only if PID is still the process we started: its command line must
# name WHAT and this run's NAME (a PID can be reused after it exits).
stop_pid() {
    local pid="$1" what="$2" grace="$3" cmdline i
    [ -n "$pid" ] || return 0
    alive "$pid" || { wait "$pid" 2>/dev/null || true; return 0; }
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    case "$cmdline" in
        *"$what"*"$NAME "*) ;;
        *) say "pid $pid is no longer our $what; not touching it"; return 0 ;;
    esac
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        say "$what (pid $pid) ignored SIGTERM for ${grace}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
    fi
    # Reap it if it is our child (not so under --cleanup).
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$? leftovers=() i
    set +e
    trap - EXIT INT TERM
    # A signal may arrive while a redirection of a function call (the dials)
    # is in force: talk to the terminal again.
    exec 1>&3 2>&4
    if [ "$KEEP" -eq 1 ] && [ "$SETUP_DONE" -eq 1 ] && [ "$status" -eq 0 ]; then
        print_keep_help
        exit 0
    fi
    section "cleaning up"
    if [ -n "$DAEMON_PID" ]; then
        stop_pid "$DAEMON_PID" kmesh-daemon 10
        say "daemon (pid $DAEMON_PID) stopped"
    fi
    if [ -n "$BPF_DIR" ] && [ -d "$BPF_DIR" ]; then
        # Removes whatever pins a daemon that did not stop cleanly left
        # (unpinning the links detaches the programs from the cgroup).
        if [ -n "$BIN" ] && [ -x "$BIN/kmesh-daemon" ]; then
            "$BIN/kmesh-daemon" uninstall --bpf-fs-path "$BPF_DIR" --log-level warn ||
                say "kmesh-daemon uninstall failed; removing the pins by hand"
        fi
        case "$BPF_DIR" in
            /sys/fs/bpf/kmesh-qs-*) rm -rf -- "$BPF_DIR" ;;
        esac
        say "removed $BPF_DIR"
    fi
    for pid in $BACKEND_PIDS; do
        stop_pid "$pid" kmesh-traffic 5
    done
    [ -n "$BACKEND_PIDS" ] && say "backends (pids $BACKEND_PIDS) stopped"
    if [ -n "$NETNS" ] && [ -e "/var/run/netns/$NETNS" ]; then
        ip netns delete "$NETNS" && say "netns $NETNS deleted"
    fi
    if [ -n "$CGROUP" ] && [ -d "$CGROUP" ]; then
        # EBUSY for a moment after the last process left; retry briefly.
        for ((i = 0; i < 50; i++)); do
            rmdir "$CGROUP" 2>/dev/null && break
            sleep 0.1
        done
        [ -d "$CGROUP" ] || say "cgroup $CGROUP removed"
    fi

    # Say plainly if anything survived.
    [ -n "$DAEMON_PID" ] && alive "$DAEMON_PID" && leftovers+=("daemon pid $DAEMON_PID")
    for pid in $BACKEND_PIDS; do
        alive "$pid" && leftovers+=("backend pid $pid")
    done
    [ -n "$NETNS" ] && [ -e "/var/run/netns/$NETNS" ] && leftovers+=("netns $NETNS")
    [ -n "$CGROUP" ] && [ -d "$CGROUP" ] && leftovers+=("cgroup $CGROUP")
    [ -n "$BPF_DIR" ] && [ -e "$BPF_DIR" ] && leftovers+=("bpffs dir $BPF_DIR")
    if [ "${#leftovers[@]}" -gt 0 ]; then
        say "WARNING: could not remove: ${leftovers[*]}"
        say "logs kept in $STATE_DIR"
        [ "$status" -eq 0 ] && status=1
    else
        rm -rf -- "$STATE_DIR"
        say "nothing left behind"
    fi
    exit "$status"
}

print_keep_help() {
    local cg_flag="--cgroup $CGROUP"
    section "left running (--keep)"
    cat <<EOF
  daemon    pid $DAEMON_PID, admin http://$ADMIN, log $STATE_DIR/daemon.log
  backends  pids $BACKEND_PIDS (in netns $NETNS)
  cgroup    $CGROUP
  pins      $BPF_DIR/kmesh/

Poke at it (as root):
  # a client in the cgroup: steered by kmesh
  $BIN/kmesh-traffic dial --netns $NETNS $cg_flag --count 12 10.96.0.10:80
  $BIN/kmesh-traffic dial --netns $NETNS $cg_flag --count 100 10.96.0.20:80
  # a client outside the cgroup: untouched, so the VIP is unreachable
  $BIN/kmesh-traffic dial --netns $NETNS --count 1 10.96.0.10:80
  # the compiled config, and what is really in the eBPF maps
  $BIN/kmeshctl --admin-address $ADMIN dump kernel-native
  $BIN/kmeshctl --admin-address $ADMIN dump kernel-native --bpf
  # the programs attached to the cgroup
  bpftool cgroup show $CGROUP
  # edit the config live: the daemon applies a saved change within a second
  # (or refuses it and keeps the old one; see last_update in the dump)
  \${EDITOR:-vi} $REPO/examples/quickstart.yaml

Clean up everything:
  sudo bash $REPO/scripts/quickstart.sh --cleanup $ID
EOF
}

# ---------------------------------------------------------------------------
# --cleanup ID: undo what a --keep run left.
# ---------------------------------------------------------------------------

if [ -n "$CLEANUP_ID" ]; then
    case "$CLEANUP_ID" in
        *[!0-9]* | '') die "--cleanup takes the numeric ID that --keep printed" ;;
    esac
    STATE_DIR="/run/kmesh-qs-$CLEANUP_ID"
    [ -f "$STATE_DIR/state" ] || die "no state in $STATE_DIR (already cleaned up?)"
    # shellcheck disable=SC1091
    . "$STATE_DIR/state"
    KEEP=0
    trap cleanup EXIT
    exit 0
fi

trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------
# 1. Dependencies and build
# ---------------------------------------------------------------------------

section "checking the machine"
[ -r /sys/kernel/btf/vmlinux ] ||
    die "the kernel has no BTF (/sys/kernel/btf/vmlinux); kmesh needs Linux >= 5.10 built with CONFIG_DEBUG_INFO_BTF"
say "kernel $(uname -r), BTF present"

# Rust usually lives in the invoking user's home (rustup); `sudo` hides it.
BUILD_AS=()
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1 && [ -n "${SUDO_USER:-}" ]; then
    user_home="$(getent passwd "$SUDO_USER" | cut -d: -f6)"
    if [ -n "$user_home" ] && [ -x "$user_home/.cargo/bin/cargo" ]; then
        export PATH="$user_home/.cargo/bin:$PATH"
        export RUSTUP_HOME="${RUSTUP_HOME:-$user_home/.rustup}"
        export CARGO_HOME="${CARGO_HOME:-$user_home/.cargo}"
        # Build as that user so the target directory and cargo's caches stay theirs.
        BUILD_AS=(sudo -u "$SUDO_USER" env "PATH=$PATH" "RUSTUP_HOME=$RUSTUP_HOME" "CARGO_HOME=$CARGO_HOME")
        say "using $SUDO_USER's Rust toolchain ($user_home/.cargo)"
    fi
fi
command -v cargo >/dev/null 2>&1 ||
    die "cargo not found: install Rust with rustup (https://rustup.rs), then run this again"

section "installing dependencies (scripts/install-deps.sh)"
bash "$REPO/scripts/install-deps.sh"

section "building (cargo build --release --bins)"
(cd "$REPO" && "${BUILD_AS[@]}" cargo build --release --bins)
target_dir="$(cd "$REPO" && "${BUILD_AS[@]}" cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')"
BIN="$target_dir/release"
for b in kmesh-daemon kmeshctl kmesh-traffic; do
    [ -x "$BIN/$b" ] || die "$BIN/$b was not built"
done
say "binaries in $BIN"

# ---------------------------------------------------------------------------
# 2. netns, cgroup, bpffs
# ---------------------------------------------------------------------------

section "setting up $NAME"
mkdir -p "$STATE_DIR"
save_state

ip netns add "$NAME"
NETNS="$NAME"
save_state
ip -n "$NETNS" link set lo up
say "netns $NETNS (only lo, up)"

# The cgroup2 mount: /sys/fs/cgroup/unified on hybrid systems, /sys/fs/cgroup
# on unified ones, else whatever cgroup2 mount there is.
cgroup2_mounts="$(awk '$3 == "cgroup2" { print $2 }' /proc/mounts)"
cgroup_root=""
for candidate in /sys/fs/cgroup/unified /sys/fs/cgroup; do
    if grep -qxF "$candidate" <<<"$cgroup2_mounts"; then
        cgroup_root="$candidate"
        break
    fi
done
[ -n "$cgroup_root" ] || cgroup_root="$(head -n1 <<<"$cgroup2_mounts")"
[ -n "$cgroup_root" ] || die "no cgroup2 mount (scripts/install-deps.sh should have made one)"
mkdir "$cgroup_root/$NAME"
CGROUP="$cgroup_root/$NAME"
save_state
say "cgroup $CGROUP"

mountpoint -q /sys/fs/bpf || die "/sys/fs/bpf is not a bpffs mount"
mkdir "/sys/fs/bpf/$NAME"
BPF_DIR="/sys/fs/bpf/$NAME"
save_state
say "bpffs dir $BPF_DIR"

# ---------------------------------------------------------------------------
# 3. Backends inside the netns
# ---------------------------------------------------------------------------

# address -> backend name; the names are what each backend answers with.
BACKENDS=(
    "127.0.0.2:8080=demo-1"
    "127.0.0.3:8080=demo-2"
    "127.0.0.4:8080=demo-3"
    "127.0.0.5:8080=reviews-v1"
    "127.0.0.6:8080=reviews-v2"
)

# start_bg LOG CMD...: start CMD in its own session (so that neither Ctrl-C
# nor a terminal hangup, nor sudo closing its pty, reaches it; the trap stops
# it, or --keep leaves it) and set BG_PID. setsid execs in place here (a
# background job of a script is not a process group leader), so $! is the
# real process, not a wrapper; checked anyway.
BG_PID=""
start_bg() {
    local log="$1"
    shift
    setsid "$@" </dev/null >"$log" 2>&1 &
    BG_PID=$!
    sleep 0.05
    if alive "$BG_PID" && ! tr '\0' ' ' <"/proc/$BG_PID/cmdline" | grep -qF "$1"; then
        die "started $1 but pid $BG_PID is something else"
    fi
}

section "starting backends in $NETNS"
for spec in "${BACKENDS[@]}"; do
    name="${spec#*=}"
    start_bg "$STATE_DIR/backend-$name.log" "$BIN/kmesh-traffic" serve --netns "$NETNS" "$spec"
    pid="$BG_PID"
    BACKEND_PIDS="${BACKEND_PIDS:+$BACKEND_PIDS }$pid"
    save_state
    for ((i = 0; i < 100; i++)); do
        grep -qx ready "$STATE_DIR/backend-$name.log" 2>/dev/null && break
        alive "$pid" || die "backend $name exited: $(cat "$STATE_DIR/backend-$name.log")"
        sleep 0.05
    done
    grep -qx ready "$STATE_DIR/backend-$name.log" || die "backend $name not ready"
    printf '  %-11s %-15s pid %s\n' "$name" "${spec%=*}" "$pid"
done

# ---------------------------------------------------------------------------
# 4. The daemon
# ---------------------------------------------------------------------------

# 127.0.0.1:15200 unless something already listens there.
admin_port="$(python3 - <<'PY'
import socket
s = socket.socket()
# As the daemon does: connections of an earlier run in TIME_WAIT do not count.
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", 15200))
    port = 15200
except OSError:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
s.close()
print(port)
PY
)"
ADMIN="127.0.0.1:$admin_port"
[ "$admin_port" = 15200 ] || say "127.0.0.1:15200 is busy; admin endpoint on $ADMIN"

XDS_FILE="$REPO/examples/quickstart.yaml"
section "starting kmesh-daemon on examples/quickstart.yaml"
DAEMON_CMD=("$BIN/kmesh-daemon" --mode kernel-native
    --xds-file "$XDS_FILE"
    --bpf-fs-path "$BPF_DIR"
    --cgroup2-path "$CGROUP"
    --admin-address "$ADMIN"
    --log-level info)
echo "  ${DAEMON_CMD[*]}"
# NO_COLOR: plain log lines in the log file.
NO_COLOR=1 start_bg "$STATE_DIR/daemon.log" "${DAEMON_CMD[@]}"
DAEMON_PID="$BG_PID"
save_state

ready=0
for ((i = 0; i < 300; i++)); do
    if curl -fsS --max-time 2 "http://$ADMIN/debug/ready" >/dev/null 2>&1; then
        ready=1
        break
    fi
    alive "$DAEMON_PID" || break
    # A refused configuration will not get better by waiting.
    curl -fsS --max-time 2 "http://$ADMIN/debug/config_dump/kernel-native" 2>/dev/null |
        grep -q '"status":"REFUSED"' && break
    sleep 0.1
done
if [ "$ready" -ne 1 ]; then
    echo "---- daemon log ($STATE_DIR/daemon.log) ----" >&2
    cat "$STATE_DIR/daemon.log" >&2
    echo "---- last_update in the config dump ----" >&2
    curl -fsS --max-time 2 "http://$ADMIN/debug/config_dump/kernel-native" 2>/dev/null |
        python3 -c 'import json, sys; print(json.dumps(json.load(sys.stdin).get("last_update"), indent=2))' >&2 ||
        echo "(admin endpoint unreachable)" >&2
    die "the daemon did not become ready (pid $DAEMON_PID)"
fi
say "daemon ready (pid $DAEMON_PID, admin http://$ADMIN)"
"$BIN/kmeshctl" --admin-address "$ADMIN" version | sed 's/^/  /'

# ---------------------------------------------------------------------------
# 5. Traffic
# ---------------------------------------------------------------------------

dial_in_cgroup() { # COUNT TARGET
    "$BIN/kmesh-traffic" dial --netns "$NETNS" --cgroup "$CGROUP" --count "$1" "$2"
}

section "dialing from $NETNS, inside the cgroup"
echo "  600 connections to 10.96.0.10:80 (demo), 1000 to 10.96.0.20:80 (reviews)"
dial_in_cgroup 600 10.96.0.10:80 >"$STATE_DIR/dial-demo.json"
dial_in_cgroup 1000 10.96.0.20:80 >"$STATE_DIR/dial-reviews.json"

section "dialing from $NETNS, OUTSIDE the cgroup"
echo "  1 connection to 10.96.0.10:80 from a process kmesh does not manage"
"$BIN/kmesh-traffic" dial --netns "$NETNS" --count 1 10.96.0.10:80 >"$STATE_DIR/dial-outside.json"

"$BIN/kmeshctl" --admin-address "$ADMIN" dump kernel-native >"$STATE_DIR/dump.json"
"$BIN/kmeshctl" --admin-address "$ADMIN" dump kernel-native --bpf >"$STATE_DIR/dump-bpf.json"

# The table: counts from the dial reports, expected shares from the weights
# the daemon compiled (the config dump), backend names from BACKENDS.
section "results"
python3 - "$STATE_DIR" "${BACKENDS[@]}" <<'PY'
import json
import sys
from collections import defaultdict

state = sys.argv[1]
names = dict(spec.split("=", 1) for spec in sys.argv[2:])  # "ip:port" -> name
load = lambda f: json.load(open(f"{state}/{f}"))
dump = load("dump.json")
problems = []


def action_of(vip):
    for listener in dump.get("listeners", []):
        if listener.get("address") == vip:
            for m in listener.get("matches", []):
                if m.get("action") is not None:
                    return m["action"]
            return listener.get("default_action")
    return None


def expected_shares(vip):
    """endpoint "ip:port" -> (share, cluster, how) from the compiled config."""
    action = action_of(vip)
    if isinstance(action, dict) and "tcp_proxy" in action:
        split = [(action["tcp_proxy"]["cluster"], 1)]
    elif isinstance(action, dict) and "weighted_clusters" in action:
        split = [tuple(c) for c in action["weighted_clusters"]["clusters"]]
    else:
        problems.append(f"{vip}: no tcp_proxy action in the config dump")
        return {}
    total_w = sum(w for _, w in split)
    out = {}
    for cluster, cw in split:
        levels = dump.get("clusters", {}).get(cluster, {}).get("levels_v4", [])
        if not levels:
            problems.append(f"{cluster}: no IPv4 endpoints in the config dump")
            continue
        eps = levels[0]["endpoints"]  # lowest priority with endpoints takes all
        ew_total = sum(e["weight"] for e in eps)
        for e in eps:
            key = f'{e["addr"]}:{e["port"]}'
            how = []
            if len(split) > 1:
                how.append(f"cluster weight {cw}/{total_w}")
            if len(eps) > 1:
                how.append(f"endpoint weight {e['weight']}/{ew_total}")
            out[key] = (cw / total_w * e["weight"] / ew_total, cluster, ", ".join(how) or "only endpoint")
    return out


def table(title, vip, report_file, exact):
    report = load(report_file)
    counts = report.get("backends", {})
    total = sum(counts.values())
    sent = report.get("connected", 0) + sum(report.get("errors", {}).values())
    exp = expected_shares(vip)
    print(f"\n{title}: {vip}, {sent} connections")
    print(f"  {'backend':<11} {'endpoint':<15} {'count':>6} {'share':>7} {'expected':>9}  from")
    rows = [(names.get(ep, "?"), ep) for ep in exp]
    rows += [(n, "?") for n in counts if n not in {names.get(ep) for ep in exp}]
    for name, ep in rows:
        n = counts.get(name, 0)
        share = n / total if total else 0.0
        e_share, cluster, how = exp.get(ep, (0.0, "?", "not in the config"))
        print(f"  {name:<11} {ep:<15} {n:>6} {share:>7.1%} {e_share:>9.1%}  {how}")
        # Round robin over sequential connections is exact; a random split
        # is checked loosely (5 points is ~4 standard deviations at n=1000).
        tolerance = 0.005 if exact else 0.05
        if abs(share - e_share) > tolerance:
            problems.append(f"{vip}: {name} got {share:.1%}, expected {e_share:.1%}")
    errors = report.get("errors", {})
    if errors:
        print(f"  errors: {errors}")
        problems.append(f"{vip}: errors {errors}")
    peers = report.get("peer_names", {})
    print(f"  getpeername() on the client sockets: {peers}")
    if set(peers) != {vip}:
        problems.append(f"{vip}: getpeername showed {peers}, expected only the VIP")
    return report


table("demo (ROUND_ROBIN, endpoint weights 3:2:1)", "10.96.0.10:80", "dial-demo.json", exact=True)
table("reviews (weighted_clusters 80/20)", "10.96.0.20:80", "dial-reviews.json", exact=False)
print("\n  The clients dialled the VIPs and getpeername() reports the VIPs, although")
print("  each socket is connected to the endpoint that answered: the kernel")
print("  rewrote the destination inside connect(); no proxy sits in between.")

outside = load("dial-outside.json")
print(f"\noutside the cgroup: 10.96.0.10:80 -> {outside.get('errors') or outside.get('backends')}")
if outside.get("errors") == {"ENETUNREACH": 1}:
    print("  ENETUNREACH: the connect was not steered (the VIP has no route in the netns).")
else:
    problems.append(f"outside the cgroup: expected ENETUNREACH, got {outside}")

if problems:
    print("\nPROBLEMS:")
    for p in problems:
        print(f"  - {p}")
    sys.exit(1)
PY

section "kmeshctl dump kernel-native (highlights)"
python3 - "$STATE_DIR" <<'PY'
import json
import sys

state = sys.argv[1]
dump = json.load(open(f"{state}/dump.json"))
bpf = json.load(open(f"{state}/dump-bpf.json"))
last = dump.get("last_update") or {}
print(f"  source {dump.get('source')}, config version {dump.get('version')}, "
      f"last update {last.get('status', '?')}"
      + (f", {len(last.get('rejected', []))} resource(s) rejected" if last.get("rejected") else ""))


def describe(action):
    if isinstance(action, dict) and "tcp_proxy" in action:
        return f"tcp_proxy -> {action['tcp_proxy']['cluster']}"
    if isinstance(action, dict) and "weighted_clusters" in action:
        parts = ", ".join(f"{c} ({w})" for c, w in action["weighted_clusters"]["clusters"])
        return f"weighted_clusters -> {parts}"
    return json.dumps(action)


print("  listeners:")
for l in dump.get("listeners", []):
    actions = [m["action"] for m in l.get("matches", []) if m.get("action") is not None]
    if l.get("default_action") is not None:
        actions.append(l["default_action"])
    print(f"    {l['address']:<15} {l['name']}")
    for a in actions:
        print(f"      {describe(a)}")
print("  clusters:")
for name, c in dump.get("clusters", {}).items():
    eps = [f"{e['addr']}:{e['port']} w{e['weight']}"
           for lvl in c.get("levels_v4", []) + c.get("levels_v6", []) for e in lvl["endpoints"]]
    print(f"    {name}  {c.get('lb_policy')}")
    print(f"      {', '.join(eps)}")
stats = bpf.get("stats", {})
print("  kernel counters (read back from the maps):")
print("    " + ", ".join(f"{k}={v}" for k, v in stats.items() if v))
conns = bpf.get("cluster_connections", [])
if conns:
    print("  connections per cluster (sockops):")
    for c in conns:
        print(f"    {c['cluster']:<52} total={c['total']} active={c['active']}")
PY
echo
echo "  Full dumps: kmeshctl --admin-address $ADMIN dump kernel-native [--bpf]"

SETUP_DONE=1
