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
          dnsmasq-base bind9-dnsutils protobuf-compiler util-linux curl ca-certificates)
# One file per package that shows it is installed: a command or a header.
NEEDED_COMMANDS=(clang llvm-strip pkg-config bpftool ip dnsmasq dig protoc nsenter mountpoint curl)
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
