#!/bin/sh
# Build the Hubbub image with podman, from Debian packages only (no container registry needed):
#   1. a minimal Debian root filesystem (python3, venv, CA certificates, useradd) made with
#      mmdebstrap from this machine's Debian release and apt sources, cached as a tarball;
#   2. that tarball imported as the base image (skipped when the image is already there);
#   3. deploy/Dockerfile built on it, with BASE pointing at that image.
# Usage: deploy/build-image.sh [--rebuild-base]      (as root, from any directory;
#   --rebuild-base remakes the root filesystem, e.g. for Debian security updates)
# Environment:
#   IMAGE           image to build                       (default localhost/hubbub:latest)
#   BASE_IMAGE      base image name                      (default localhost/hubbub-base:<suite>)
#   HUBBUB_CACHE    where the rootfs tarball is kept     (default ~/.cache/hubbub-image)
#   SUITE           Debian suite                         (default: this machine's codename)
#   APT_SOURCES     apt sources for mmdebstrap           (default: this machine's Debian sources)
#   BUILD_CA_BUNDLE CA bundle mounted (read-only, build steps only, never in the image) for
#                   pip behind a TLS-inspecting proxy    (default: $PIP_CERT when set)
#   PODMAN          podman command with global flags     (default: podman, with --runtime runc
#                   when runc is installed: crun 1.8 rejects hybrid cgroup v1/v2 hosts)
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
REBUILD_BASE=0
for arg in "$@"; do
    case $arg in
        --rebuild-base) REBUILD_BASE=1 ;;
        -h | --help) sed -n '2,/^set -eu/s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "build-image.sh: unknown argument: $arg (see --help)" >&2; exit 2 ;;
    esac
done

need() {
    command -v "$1" >/dev/null 2>&1 || {
        echo "build-image.sh: $1 is not installed (apt-get install $2)" >&2
        exit 2
    }
}
need podman podman
need mmdebstrap mmdebstrap

if [ -z "${SUITE:-}" ]; then
    SUITE=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [ -n "$SUITE" ] || { echo "build-image.sh: set SUITE (no VERSION_CODENAME)" >&2; exit 2; }
fi
if [ -z "${APT_SOURCES:-}" ]; then
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        APT_SOURCES=/etc/apt/sources.list.d/debian.sources
    elif [ -s /etc/apt/sources.list ]; then
        APT_SOURCES=/etc/apt/sources.list
    else
        echo "build-image.sh: set APT_SOURCES (no Debian apt sources found)" >&2
        exit 2
    fi
fi
IMAGE=${IMAGE:-localhost/hubbub:latest}
BASE_IMAGE=${BASE_IMAGE:-localhost/hubbub-base:$SUITE}
CACHE=${HUBBUB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hubbub-image}
PACKAGES=python3,python3-venv,ca-certificates,passwd
# The tarball's name changes with the package list, so a changed list is never served stale.
ARCH=$(dpkg --print-architecture)
ROOTFS=$CACHE/rootfs-$SUITE-$ARCH-$(echo "$PACKAGES" | cksum | cut -d' ' -f1).tar
if [ -z "${PODMAN:-}" ]; then
    PODMAN=podman
    command -v runc >/dev/null 2>&1 && PODMAN="podman --runtime runc"
fi

# ---- 1. base root filesystem (cached) ----------------------------------------------------------
if [ "$REBUILD_BASE" = 1 ] || [ ! -s "$ROOTFS" ]; then
    mkdir -p "$CACHE"
    echo "build-image.sh: making the $SUITE root filesystem -> $ROOTFS"
    # essential + python: no apt, no perl; merged /usr set up directly (not via usrmerge).
    mmdebstrap --variant=essential --format=tar \
        --include="$PACKAGES" \
        --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-include=/usr/share/locale/locale.alias' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        "$SUITE" "$ROOTFS.part" "$APT_SOURCES"
    mv "$ROOTFS.part" "$ROOTFS"
    REBUILD_BASE=1
fi

# ---- 2. base image ------------------------------------------------------------------------------
if [ "$REBUILD_BASE" = 1 ] || ! $PODMAN image exists "$BASE_IMAGE"; then
    echo "build-image.sh: importing $ROOTFS as $BASE_IMAGE"
    $PODMAN import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/sh"]' \
        "$ROOTFS" "$BASE_IMAGE" >/dev/null
fi

# ---- 3. the Hubbub image ------------------------------------------------------------------------
if [ -z "${BUILD_CA_BUNDLE:-}" ] && [ -n "${PIP_CERT:-}" ]; then
    BUILD_CA_BUNDLE=$PIP_CERT
fi
set --
if [ -n "${BUILD_CA_BUNDLE:-}" ]; then
    if [ ! -r "$BUILD_CA_BUNDLE" ]; then
        echo "build-image.sh: cannot read BUILD_CA_BUNDLE=$BUILD_CA_BUNDLE" >&2
        exit 2
    fi
    set -- --volume "$BUILD_CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro"
fi
# Build steps get the caller's own limits: podman's defaults for root (nofile 1048576) fail
# where the caller may not raise them (no CAP_SYS_RESOURCE, as in some sandboxes).
NOFILE=$(ulimit -Hn)
[ "$NOFILE" = unlimited ] && NOFILE=1048576
echo "build-image.sh: building $IMAGE on $BASE_IMAGE"
cd "$ROOT"
# --format docker keeps the HEALTHCHECK (the OCI image format has no field for it);
# --pull=never: the base exists only locally.
$PODMAN build \
    --format docker \
    --pull=never \
    --ulimit "nofile=$NOFILE:$NOFILE" \
    --build-arg "BASE=$BASE_IMAGE" \
    --file deploy/Dockerfile \
    --ignorefile deploy/Dockerfile.dockerignore \
    --tag "$IMAGE" \
    "$@" \
    .
echo "build-image.sh: built $IMAGE"
