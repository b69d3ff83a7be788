# Shared helpers for the project's scripts: engine start-up and the base image.
# Sourced, not run.  Every function is idempotent.

log() { printf '[whaletop] %s\n' "$*" >&2; }

_have() {
    # CHECK PACKAGE: a command, an absolute path that exists, or "-" for what dpkg says of
    # the package (libraries and data provide no command).
    local check=$1 pkg=$2 p
    case $check in
        -)  for p in ${pkg//|/ }; do
                [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] \
                    && return 0
            done
            return 1 ;;
        /*) [ -e "$check" ] ;;
        *)  PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" command -v "$check" >/dev/null 2>&1 ;;
    esac
}

_candidate() {
    # "a|b": the first package this machine's Debian has (Debian 13's name, then 12's).
    local p
    for p in ${1//|/ }; do
        # grep reads it all: with -q, apt-cache could die of SIGPIPE and pipefail say no.
        apt-cache policy "$p" 2>/dev/null | grep 'Candidate: [^(]' >/dev/null \
            && { echo "$p"; return 0; }
    done
    log "this machine's Debian has no package ${1//|/ or }"
    echo "${1%%|*}"  # apt-get says so too, and fails
}

apt_install() {
    # Install Debian packages only when what they provide is missing: pairs of CHECK
    # PACKAGE (see _have; PACKAGE may be "a|b").  Services the packages bring (nginx's,
    # Prometheus') are not started: the tests start their own, on their own ports.
    local missing=() chosen=() check pkg
    while [ $# -gt 0 ]; do
        check=$1 pkg=$2; shift 2
        _have "$check" "$pkg" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        log "missing Debian packages ${missing[*]}: install them, or run this as root"
        return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    for pkg in "${missing[@]}"; do chosen+=("$(_candidate "$pkg")"); done
    log "installing ${chosen[*]}"
    local policy=/usr/sbin/policy-rc.d ours="" status=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\n# scripts/test: installing packages for the tests starts no service\nexit 101\n' \
            >"$policy"
        chmod 755 "$policy"
        ours=1
    fi
    apt-get install -y -q --no-install-recommends "${chosen[@]}" >/dev/null || status=$?
    [ -z "$ours" ] || rm -f "$policy"
    return "$status"
}

remove_stale_pidfile() {
    # A daemon killed without cleanup leaves its pid file; a restart then refuses to run.
    local file=$1 pid
    [ -f "$file" ] || return 0
    pid=$(cat "$file" 2>/dev/null || true)
    if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
        log "removing stale $file (pid ${pid:-none} is gone)"
        rm -f "$file"
    fi
}

ensure_docker() {
    apt_install dockerd docker.io
    if docker info >/dev/null 2>&1; then return 0; fi
    if [ "$(id -u)" -ne 0 ]; then
        log "no Docker engine answers and only root can start one"; return 1
    fi
    remove_stale_pidfile /var/run/docker.pid
    remove_stale_pidfile /run/docker/containerd/containerd.pid
    log "starting dockerd (log: /var/log/whaletop-dockerd.log)"
    nohup dockerd >/var/log/whaletop-dockerd.log 2>&1 &
    local i
    for i in $(seq 1 100); do
        docker info >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    log "dockerd did not come up; see /var/log/whaletop-dockerd.log"; return 1
}

ensure_base_image() {
    # FROM debian:trixie needs that image; with no registry, build it from Debian's mirror.
    local image=${1:-debian:trixie} suite=${2:-trixie}
    local mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
    docker image inspect "$image" >/dev/null 2>&1 && return 0
    if timeout 60 docker pull -q "$image" >/dev/null 2>&1; then return 0; fi
    log "cannot pull $image: bootstrapping it offline from $mirror"
    apt_install debootstrap debootstrap
    local root
    root=$(mktemp -d /var/tmp/whaletop-rootfs.XXXXXX)
    debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$root.log" 2>&1 \
        || { log "debootstrap failed; see $root.log"; return 1; }
    # Same slimming the official image does: no package lists or caches in the layer.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
    tar -C "$root" -c . | docker import \
        -c 'CMD ["bash"]' -c 'ENV LANG=C.UTF-8' - "$image" >/dev/null
    rm -rf "$root" "$root.log"
    log "imported $image"
}

build_image() {
    local tag=${1:-whaletop}
    local here
    here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    ensure_docker
    ensure_base_image debian:trixie trixie
    log "building $tag"
    # Host network: the Debian mirror is plain HTTP and reachable from the host's network only.
    docker build --network host -t "$tag" "$here"
}
