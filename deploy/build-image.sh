#!/usr/bin/env bash
# Builds the image wal-archiver:local.
#
#   deploy/build-image.sh                     # no registry needed (the default)
#   deploy/build-image.sh --base registry     # multi-stage deploy/Dockerfile: pulls rust:1-bookworm
#
# --base local (default; or WAL_ARCHIVER_IMAGE_BASE=local)
#   1. wal-archiver-base:bookworm, once per machine: `debootstrap --variant=minbase
#      bookworm` plus ca-certificates, imported with `docker import`. About a minute;
#      kept under that tag, --rebuild-base makes it again (e.g. for security updates).
#   2. the release binary: `cargo build --release --locked` (a no-op when it is up to
#      date), or the one given with --binary PATH.
#   3. deploy/Dockerfile.local: the base only assembles a root filesystem with the
#      binary (debug info stripped, symbols kept), the libraries it loads, dash for the
#      entrypoint, CA certificates and /etc/passwd; the image is FROM scratch.
# --base registry (or WAL_ARCHIVER_IMAGE_BASE=registry)
#   deploy/Dockerfile with the tracked files of the repository as context (not target/).
#
# --garage: also build wal-archiver-garage:local (Garage for compose's s3 profile) on the
#   local base, from ../shared/tools/garage-2.5.0-x86_64-linux.zst (or GARAGE_ZST).
# Other options: --tag NAME (default wal-archiver:local), --binary PATH (local only;
# or WAL_ARCHIVER_BINARY), --rebuild-base, --max-mb N (default 100: fails above it).
# Needs root for debootstrap (the base step only) and a Docker engine.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

base_kind="${WAL_ARCHIVER_IMAGE_BASE:-local}"
tag="wal-archiver:local"
binary="${WAL_ARCHIVER_BINARY:-}"
rebuild_base=false
garage=false
garage_zst="${GARAGE_ZST:-$root/../shared/tools/garage-2.5.0-x86_64-linux.zst}"
max_mb=100
base_tag="wal-archiver-base:bookworm"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
    case "$1" in
    --base) base_kind="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    --binary) binary="$2"; shift 2 ;;
    --rebuild-base) rebuild_base=true; shift ;;
    --garage) garage=true; shift ;;
    --max-mb) max_mb="$2"; shift 2 ;;
    -h | --help) usage ;;
    *) echo "unknown argument: $1" >&2; usage 2 >&2 ;;
    esac
done

step() { printf '== %s\n' "$*" >&2; }
started=$SECONDS

build_base() {
    if ! $rebuild_base && docker image inspect "$base_tag" >/dev/null 2>&1; then
        step "base $base_tag: present ($(docker image inspect -f '{{index .Config.Labels "org.opencontainers.image.created"}}' "$base_tag"))"
        return
    fi
    [ "$(id -u)" = 0 ] || { echo "debootstrap needs root to make $base_tag" >&2; exit 1; }
    if ! command -v debootstrap >/dev/null 2>&1; then
        step "installing debootstrap"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    fi
    local dir
    dir="$(mktemp -d)"
    # shellcheck disable=SC2064 # expand $dir now
    trap "rm -rf '$dir'" EXIT
    step "base $base_tag: debootstrap --variant=minbase bookworm from $mirror"
    debootstrap --variant=minbase --include=ca-certificates bookworm "$dir/root" "$mirror" \
        >"$dir/debootstrap.log" 2>&1 || { tail -20 "$dir/debootstrap.log" >&2; exit 1; }
    # What an image never uses: package caches and lists (apt-get update brings the
    # lists back), documentation, translations.
    chroot "$dir/root" apt-get clean
    rm -rf "$dir/root"/var/lib/apt/lists/* "$dir/root"/usr/share/doc/* \
        "$dir/root"/usr/share/man/* "$dir/root"/usr/share/locale/* "$dir/root"/var/log/*
    tar -C "$dir/root" --numeric-owner -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change "LABEL org.opencontainers.image.created=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        --change 'CMD ["/bin/bash"]' \
        --message "debootstrap --variant=minbase --include=ca-certificates bookworm" \
        - "$base_tag" >/dev/null
    rm -rf "$dir"
    trap - EXIT
    rebuild_base=false # once per run: --garage reuses it
}

build_local() {
    build_base
    if [ -z "$binary" ]; then
        step "cargo build --release --locked"
        (cd "$root" && cargo build --release --locked)
        binary="$root/target/release/wal-archiver"
    fi
    [ -x "$binary" ] || { echo "no executable at $binary" >&2; exit 1; }
    local ctx
    ctx="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '$ctx'" EXIT
    # Debug info is most of the file (about 100 MB of 115); symbols stay for backtraces.
    strip --strip-debug -o "$ctx/wal-archiver" "$binary"
    cp "$root/deploy/image/rootfs.sh" "$root/deploy/image/entrypoint.sh" "$ctx/"
    step "docker build -f deploy/Dockerfile.local (binary $binary)"
    docker build -q -f "$root/deploy/Dockerfile.local" --build-arg "BASE=$base_tag" -t "$tag" "$ctx" >/dev/null
    rm -rf "$ctx"
    trap - EXIT
}

build_garage() {
    build_base
    [ -f "$garage_zst" ] || { echo "no Garage binary at $garage_zst (set GARAGE_ZST)" >&2; exit 1; }
    command -v zstd >/dev/null 2>&1 || { echo "zstd is needed to unpack $garage_zst" >&2; exit 1; }
    local ctx
    ctx="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '$ctx'" EXIT
    zstd -q -d -c "$garage_zst" >"$ctx/garage.full"
    strip --strip-debug -o "$ctx/garage" "$ctx/garage.full"
    rm "$ctx/garage.full"
    cp "$root/deploy/image/rootfs.sh" "$root"/deploy/garage/{garage.toml,setup.sh} "$ctx/"
    step "docker build -f deploy/garage/Dockerfile (Garage from $garage_zst)"
    docker build -q -f "$root/deploy/garage/Dockerfile" --build-arg "BASE=$base_tag" \
        -t wal-archiver-garage:local "$ctx" >/dev/null
    rm -rf "$ctx"
    trap - EXIT
    step "image wal-archiver-garage:local: $(($(docker image inspect -f '{{.Size}}' wal-archiver-garage:local) / 1000 / 1000)) MB"
}

build_registry() {
    step "docker build -f deploy/Dockerfile (tracked files as context)"
    # The legacy builder reads only a .dockerignore at the context root: send the
    # tracked and untracked-but-not-ignored files instead of the directory (target/
    # alone is gigabytes).
    (cd "$root" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -c) |
        docker build -f deploy/Dockerfile -t "$tag" -
}

case "$base_kind" in
local) build_local ;;
registry) build_registry ;;
*) echo "--base is local or registry, not $base_kind" >&2; exit 2 ;;
esac

bytes=$(docker image inspect -f '{{.Size}}' "$tag")
mb=$((bytes / 1000 / 1000))
step "image $tag: $mb MB ($bytes bytes), built in $((SECONDS - started)) s"
if [ "$mb" -ge "$max_mb" ]; then
    echo "image $tag is $mb MB, the limit is $max_mb MB" >&2
    exit 1
fi
docker run --rm --entrypoint wal-archiver "$tag" --version >&2
if $garage; then build_garage; fi
