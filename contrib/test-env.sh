#!/usr/bin/env bash
# Prepares everything the test suite needs on this machine, then runs it.
#
#   contrib/test-env.sh            # ensure Docker + test images, then `cargo test`
#   contrib/test-env.sh --setup    # only ensure Docker + test images
#
# On Debian as root it installs docker.io, busybox-static, musl-tools, btrfs-progs, runsc,
# podman, nginx-light and systemd (for systemd-analyze) when missing and starts
# `dockerd --bridge=none --iptables=false --ip-masq=false` when no engine answers; elsewhere it
# says what is missing and stops. Images are built offline with `docker import`, since no
# registry can be reached: lessl-test/busybox (static busybox and its applet links) and
# lessl-test/noshell (one static binary, no shell at all).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
log() { printf 'test-env: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

docker_ok() { timeout 10 docker version >/dev/null 2>&1; }

install_packages() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v docker >/dev/null 2>&1 || missing+=(docker.io)
    [ -x /bin/busybox ] || missing+=(busybox-static)
    command -v musl-gcc >/dev/null 2>&1 || missing+=(musl-tools)
    # tests/isolation.rs runs a private engine on a loop-mounted btrfs, whose storage driver
    # has per-container quotas (the main engine's overlay2 on ext4 has none).
    command -v mkfs.btrfs >/dev/null 2>&1 || missing+=(btrfs-progs)
    # tests/engines.rs runs tasks under gVisor on a private engine that knows runsc.
    command -v runsc >/dev/null 2>&1 || missing+=(runsc)
    # tests/podman.rs runs the core suite against private `podman system service`s, each
    # with its own storage and socket (Debian's podman brings conmon, runc and
    # containers-storage with it); the machine's own Podman is never configured.
    command -v podman >/dev/null 2>&1 || missing+=(podman)
    # tests/scale_out.rs puts nginx (run by the test, on a loopback port) in front of two
    # Lessls with contrib/lessl-lb.nginx.conf.
    type -P nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
    # tests/ops.rs checks the units with `systemd-analyze verify`, which works without
    # systemd running as PID 1.
    command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
    # tests/reliability.rs starts private dockerds (docker.io, busybox-static above) and,
    # with the other tests, signals processes with kill(1), which Debian ships in procps;
    # `type -P` looks past the shell's builtin.
    type -P kill >/dev/null 2>&1 || missing+=(procps)
    # tests/api_docs.rs makes a venv under target/ for jsonschema and schemathesis.
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
    python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        die "missing: ${missing[*]}; install them (Debian: apt-get install ${missing[*]}) and rerun"
    fi
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || log "apt-get update failed; trying the cached lists"
    apt-get install -y -qq "${missing[@]}" >/dev/null
}

start_dockerd() {
    docker_ok && return 0
    [ "$(id -u)" -eq 0 ] || die "no Docker Engine answers at ${DOCKER_HOST:-/var/run/docker.sock}; start one or run as root"
    command -v dockerd >/dev/null 2>&1 || die "dockerd not installed"
    log "starting dockerd (no bridge, no iptables)"
    # setsid: the engine must outlive this script and the test run that started it.
    setsid dockerd --bridge=none --iptables=false --ip-masq=false \
        >/var/log/lessl-test-dockerd.log 2>&1 < /dev/null &
    for _ in $(seq 1 60); do
        docker_ok && return 0
        sleep 0.5
    done
    tail -20 /var/log/lessl-test-dockerd.log >&2 || true
    die "dockerd did not come up within 30 s"
}

ensure_toolchain() {
    command -v cargo >/dev/null 2>&1 || die "cargo not found; install Rust with rustup"
    # rust-toolchain.toml names the musl target; rustup installs it on first use, but an
    # explicit add gives a clearer failure when it cannot.
    if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -q x86_64-unknown-linux-musl; then
        log "adding the x86_64-unknown-linux-musl target"
        (cd "$here" && rustup target add x86_64-unknown-linux-musl >/dev/null)
    fi
}

build_images() {
    local tmp
    if ! docker image inspect lessl-test/busybox >/dev/null 2>&1; then
        log "importing lessl-test/busybox"
        tmp=$(mktemp -d)
        mkdir -p "$tmp/bin" "$tmp/tmp" "$tmp/etc"
        cp /bin/busybox "$tmp/bin/busybox"
        chmod 1777 "$tmp/tmp"
        for applet in $("$tmp/bin/busybox" --list); do
            [ "$applet" = busybox ] || ln -s busybox "$tmp/bin/$applet"
        done
        printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$tmp/etc/passwd"
        printf 'root:x:0:\nnogroup:x:65534:\n' > "$tmp/etc/group"
        tar -C "$tmp" -c . | docker import \
            -c 'ENV PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin' - lessl-test/busybox >/dev/null
        rm -rf "$tmp"
    fi
    if ! docker image inspect lessl-test/noshell >/dev/null 2>&1; then
        # One static program and nothing else: no /bin/sh, no sleep. `echo`-like behaviour
        # comes from busybox renamed, which only runs the applet its name says.
        log "importing lessl-test/noshell"
        tmp=$(mktemp -d)
        mkdir -p "$tmp/usr/bin"
        cp /bin/busybox "$tmp/usr/bin/echo"
        cp /bin/busybox "$tmp/usr/bin/cat"
        tar -C "$tmp" -c . | docker import -c 'ENV PATH=/usr/bin' - lessl-test/noshell >/dev/null
        rm -rf "$tmp"
    fi
}

install_packages
start_dockerd
ensure_toolchain
build_images
[ "${1:-}" = --setup ] && { log "ready"; exit 0; }
cd "$here"
cargo test "$@"
# The suite's own promise: whatever it ran, no container of Lessl's is left on the engine.
left=$(docker ps -aq --filter label=lessl.managed | wc -l)
if [ "$left" -ne 0 ]; then
    docker ps -a --filter label=lessl.managed >&2
    die "$left container(s) labelled lessl.managed were left behind"
fi
log "no lessl.managed container left"
