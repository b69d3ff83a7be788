# Shared helpers for the project's scripts: engine start-up and the base image.
# Sourced, not run.  Every function is idempotent.

log() { printf '[whaletop] %s\n' "$*" >&2; }

apt_install() {
    # Install Debian packages only when a command they provide is missing.
    local missing=()
    local cmd pkg
    while [ $# -gt 0 ]; do
        cmd=$1 pkg=$2; shift 2
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
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
