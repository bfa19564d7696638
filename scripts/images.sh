#!/usr/bin/env bash
# `make images`: the agent and responder images, built with podman from deploy/images/*.Dockerfile,
# as root, on a node with no image registry. Idempotent; what it made is cached under
# $LLMSLO_IMAGE_CACHE (default /var/cache/llmslo-images) and in podman's store.
#
# - The Dockerfiles' base, debian:bookworm-slim, is made here when podman has none: a minimal
#   Debian bookworm root from debootstrap, from the same package mirror this machine's apt uses
#   (its sources and Acquire:: options go into the root, so apt inside the builds reaches it too),
#   slimmed like the published image (no docs, man pages or apt lists) and imported.
# - Python packages come from a wheelhouse that this machine's pip fills (its index, its
#   certificates); the builds install from it with no network of their own.
# - podman's settings for this kind of node are the project's (deploy/images/containers.conf).
#
#   LLMSLO_IMAGE_TAG (default 0.1.0) tags llmslo/agent and llmslo/responder.
#   LLMSLO_IMAGE_REBUILD=1 builds the images again even when they are up to date (the base is kept).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
CACHE=${LLMSLO_IMAGE_CACHE:-/var/cache/llmslo-images}
TAG=${LLMSLO_IMAGE_TAG:-0.1.0}
BASE=debian:bookworm-slim
export CONTAINERS_CONF="$ROOT/deploy/images/containers.conf"

log() { echo "images: $*"; }
# shellcheck source=scripts/packages.sh
source "$ROOT/scripts/packages.sh"
die() { echo "images: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (podman runs rootful here, and debootstrap needs root)"

# --- tools -----------------------------------------------------------------------------------
# runc is named so that apt does not pick crun for podman's runtime (crun refuses hybrid cgroups).
ensure_packages images podman runc conmon fuse-overlayfs debootstrap
mkdir -p "$CACHE"

# --- the base image --------------------------------------------------------------------------
apt_mirror() {
    # The first Debian mirror in this machine's apt sources (deb822 or one-line format).
    local uri
    uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2; exit}')
    [[ -n "$uri" ]] || uri=$(grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list | awk '{print $2; exit}')
    [[ -n "$uri" ]] || die "no Debian mirror in /etc/apt/sources.list*: cannot debootstrap the base root"
    echo "$uri"
}

if ! podman image exists "$BASE"; then
    tarball="$CACHE/bookworm-slim.tar"
    if [[ ! -s "$tarball" ]]; then
        rootfs="$CACHE/bookworm-root"
        rm -rf "$rootfs"
        mirror=$(apt_mirror)
        log "debootstrapping a minimal bookworm root (a few minutes)"
        debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$CACHE/debootstrap.log" 2>&1 \
            || { tail -20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
        # apt inside the builds: this machine's sources, and its Acquire:: options (a mirror that
        # serves a snapshot needs Check-Valid-Until off, for one).
        rm -f "$rootfs/etc/apt/sources.list"
        cp -a /etc/apt/sources.list.d/. "$rootfs/etc/apt/sources.list.d/"
        find "$rootfs/etc/apt/sources.list.d" -name '*.disabled*' -delete
        [[ -s /etc/apt/sources.list ]] && cp /etc/apt/sources.list "$rootfs/etc/apt/sources.list"
        for f in /etc/apt/apt.conf.d/*; do
            if [[ -f "$f" ]] && ! grep -qv -e '^Acquire::' -e '^\s*$' -e '^//' -e '^#' "$f"; then
                cp "$f" "$rootfs/etc/apt/apt.conf.d/"
            fi
        done
        # What the published slim image leaves out, now and in every later install: downloaded
        # packages once they are installed, apt's binary caches, documentation and translations.
        cat >"$rootfs/etc/apt/apt.conf.d/50-image-slim" <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
APT
        cat >"$rootfs/etc/dpkg/dpkg.cfg.d/50-image-slim" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
DPKG
        chroot "$rootfs" apt-get clean
        rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
               "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/log/*.log
        find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
        find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
        tar --numeric-owner -C "$rootfs" -cf "$tarball.part" .
        mv "$tarball.part" "$tarball"
        rm -rf "$rootfs"
    fi
    log "importing $tarball as $BASE"
    podman import --quiet --change 'CMD ["bash"]' "$tarball" "$BASE" >/dev/null
fi

# --- the wheelhouse --------------------------------------------------------------------------
# Every Python package the images install, as wheels built for this machine's Python, which must
# be the images' (bookworm's 3.11 on x86-64; a package with no wheel is built here).
HASH=$(sha256sum pyproject.toml | cut -d' ' -f1)
WHEELS="$CACHE/wheels"
if [[ ! -f "$WHEELS/.pyproject-$HASH" ]]; then
    log "filling the wheelhouse $WHEELS"
    rm -rf "$WHEELS"
    mkdir -p "$WHEELS"
    PY=${PYTHON:-$ROOT/.venv/bin/python}
    [[ -x "$PY" ]] || PY=python3
    mapfile -t deps < <("$PY" -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")')
    "$PY" -m pip wheel -q --wheel-dir "$WHEELS" "setuptools>=77" wheel "${deps[@]}" >"$CACHE/pip.log" 2>&1 \
        || { tail -20 "$CACHE/pip.log" >&2; die "pip wheel failed (log: $CACHE/pip.log)"; }
    touch "$WHEELS/.pyproject-$HASH"
fi

# --- the images ------------------------------------------------------------------------------
# An image is built again when what it is built from changed: its Dockerfile and the files it
# copies (a hash of them is the image's label), so that the container tests run today's code.
# Unchanged layers (the OS packages) come from podman's cache.
source_hash() {
    local dockerfile=$1
    { cat "$dockerfile"
      find pyproject.toml README.md common capture responder playbooks lab -type f \
           -not -path '*/__pycache__/*' -print0 | sort -z | xargs -0 sha256sum
    } | sha256sum | cut -d' ' -f1
}

build() {
    local name=$1 image="llmslo/$1:$TAG" dockerfile="deploy/images/$1.Dockerfile" hash built
    hash=$(source_hash "$dockerfile")
    built=$(podman image inspect --format '{{index .Labels "llmslo.source"}}' "$image" 2>/dev/null || true)
    if [[ "${LLMSLO_IMAGE_REBUILD:-}" != 1 && "$built" == "$hash" ]]; then
        log "$image is up to date (LLMSLO_IMAGE_REBUILD=1 builds it again)"
        return
    fi
    log "building $image"
    podman build -q --network=host --volume "$WHEELS:/wheels:ro" \
        --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheels --label "llmslo.source=$hash" \
        -f "$dockerfile" -t "$image" . >/dev/null
}
build agent
build responder
# The builds these replaced, left untagged.
podman image prune -f --filter label=llmslo.source >/dev/null
podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^(localhost/)?(llmslo/|debian:bookworm-slim)' | sed 's/^/images: /'
