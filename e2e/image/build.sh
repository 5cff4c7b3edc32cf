#!/usr/bin/env bash
# Build the project's container image from images/Dockerfile without Docker (buildah) and write it as a
# docker-archive that `ctr -n k8s.io images import` takes (the real-pod tier, tests/e2e/test_real_pods.py; the
# tier's small single-binary images are e2e/node/images.py's).
#
#   e2e/image/build.sh            # build if missing or stale; last line: IMAGE_REF=ARCHIVE
#   e2e/image/build.sh --check    # the same, then import it into a throwaway containerd and run it
#
# The image is ghcr.io/agentfleet/agentfleet:<__version__>, the operator's default (render/defaults.py); the archive
# embeds that reference, also written to ARCHIVE.ref as e2e/node/images.py does. Its name carries a key of the
# inputs (agentfleet-KEY.tar); older keys are deleted.
#
# How: a Debian `bookworm` minbase rootfs (debootstrap) with python3 and a venv at /usr/local/python first on PATH
# stands in for python:3.11-slim (no registry here) as localhost/agentfleet-python-base:bookworm; `buildah bud
# --isolation chroot` builds images/Dockerfile on it. No `--layers`: buildah 1.28 reuses a cached `RUN
# --mount=type=bind,from=build` layer after the build stage changed (containers/buildah#4522), which ships stale
# code. Instead the dependency wheels are cached: a wheelhouse resolved once per dependency list (pyproject's
# dependencies + EXTRAS + build-system.requires) and handed to the Dockerfile's pip through a pip.conf
# (no-index, find-links) in a read-only directory mounted over /root for the build only (the Dockerfile's
# PIP_NO_CACHE_DIR=1 rules out a pip cache; a mount over an existing directory leaves nothing in the image).
# AGENTFLEET_IMAGE_WHEELHOUSE=0 builds online from PyPI instead.
#
# Cache: archives in ${AGENTFLEET_CACHE:-$HOME/.cache/agentfleet}/images/, the rest (buildah storage, base rootfs,
# wheelhouse, lock) in its buildah/ folder. Rebuilt when their inputs change: the base on suite + packages; agentfleet on the content of
# pyproject.toml, README.md, operator/ (git's tracked + untracked, not ignored, files) and images/Dockerfile,
# copied to a snapshot first so the key matches what was built. One run at a time (flock); a second waits.
# Env: AGENTFLEET_IMAGE_EXTRAS (default ""), AGENTFLEET_BUILDAH_DRIVER (overlay|vfs; default: overlay if it
# works), AGENTFLEET_DEBIAN_MIRROR. Exits 3 when it cannot build here (not root, no apt-get, mirror unreachable).
set -euo pipefail

RECIPE=1                                  # bump to invalidate every cached image built by this script
SUITE=bookworm
MIRROR=${AGENTFLEET_DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_PACKAGES="python3 python3-venv ca-certificates"
BASE_REF=localhost/agentfleet-python-base:$SUITE
EXTRAS=${AGENTFLEET_IMAGE_EXTRAS:-}
WHEELHOUSE_ON=${AGENTFLEET_IMAGE_WHEELHOUSE:-1}
HOST_CA=/etc/ssl/certs/ca-certificates.crt

CHECK=0
case "${1:-}" in
  "") ;;
  --check) CHECK=1 ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

REPO=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${AGENTFLEET_CACHE:-$HOME/.cache/agentfleet}/images
CACHE=$OUT/buildah
log() { echo "[image] $(date +%H:%M:%S) $*" >&2; }
die() { echo "[image] error: $*" >&2; exit 1; }
cannot() { echo "[image] cannot build images here: $*" >&2; exit 3; }
sha() { sha256sum | cut -c1-64; }

# --- preconditions ------------------------------------------------------------------------------------------------
[[ $(id -u) -eq 0 ]] || cannot "needs root (debootstrap, chroot, buildah --isolation chroot)"
command -v apt-get >/dev/null || cannot "no apt-get (needs Debian packages buildah and debootstrap)"
need() {  # PACKAGE BINARY: install through the repo's helper, whose exit 3 means "cannot here"
  local rc=0
  bash "$REPO/e2e/apt-install.sh" "$1" "$2" >/dev/null || rc=$?
  [[ $rc -eq 0 ]] || { [[ $rc -eq 3 ]] && cannot "could not install $1"; die "installing $1 failed (rc=$rc)"; }
}
need buildah buildah
need debootstrap debootstrap

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
if ! flock -n 9; then log "another build holds $CACHE/.lock; waiting"; flock 9; fi

# Leftovers of an interrupted run: mounts under tmp/ (debootstrap mounts proc/sys in its target), then the files.
TMP=$CACHE/tmp
if [[ -d $TMP ]]; then
  awk -v p="$TMP/" 'index($2, p) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do umount -l "$m" || true; done
  rm -rf --one-file-system "$TMP"
fi
mkdir -p "$TMP"
cleanup() { rm -rf --one-file-system "$TMP" 2>/dev/null || true; }
trap cleanup EXIT

# --- buildah storage under the cache: overlay when it works here, else vfs; one root per driver -------------------
probe_driver() {  # DRIVER: can a container of this driver be created and mounted?
  local b=(buildah --root "$CACHE/buildah-$1/root" --runroot "$CACHE/buildah-$1/run" --storage-driver "$1") c
  c=$("${b[@]}" from --pull-never scratch 2>/dev/null) || return 1
  local ok=0
  if "${b[@]}" mount "$c" >/dev/null 2>&1; then "${b[@]}" umount "$c" >/dev/null 2>&1; else ok=1; fi
  "${b[@]}" rm "$c" >/dev/null 2>&1
  return $ok
}
DRIVER=${AGENTFLEET_BUILDAH_DRIVER:-}
if [[ -z $DRIVER ]]; then
  if [[ -f $CACHE/buildah.driver ]]; then DRIVER=$(cat "$CACHE/buildah.driver")
  elif probe_driver overlay; then DRIVER=overlay
  else log "overlay storage does not work here; using vfs (slower, more disk)"; DRIVER=vfs; fi
  echo "$DRIVER" > "$CACHE/buildah.driver"
fi
B=(buildah --root "$CACHE/buildah-$DRIVER/root" --runroot "$CACHE/buildah-$DRIVER/run" --storage-driver "$DRIVER")
# The storage is private to this script and we hold the lock: working containers left by a killed run can go.
"${B[@]}" rm --all >/dev/null 2>&1 || true
have_image() { "${B[@]}" inspect --type image "$1" >/dev/null 2>&1; }

# export_archive REF ARCHIVE: write the image as a docker-archive (atomically) and ARCHIVE.ref; delete the archives
# of older keys (same name up to the key). ARCHIVE is $OUT/NAME-KEY.tar, KEY 16 hex digits.
export_archive() {
  local tmp f
  tmp="$TMP/$(basename "$2").partial"
  "${B[@]}" push -q "$1" "docker-archive:$tmp:$1" >&2
  mv -f "$tmp" "$2"
  echo "$1" > "$2.ref"
  log "wrote $2 ($(du -m "$2" | cut -f1) MB)"
  for f in "${2%-*}"-????????????????.tar; do
    [[ $f == "$2" || ! -f $f ]] || rm -f "$f" "$f.ref"
  done
}
fresh() { [[ -f $1 && -f $1.ref ]]; }  # ARCHIVE: the key is in its name; .ref is written last

# --- 1. the base image: Debian minbase + python3 + a venv (/usr/local/python) first on PATH ----------------------
BASE_KEY=$(printf '%s\n' "$RECIPE" "$SUITE" "$BASE_PACKAGES" | sha | cut -c1-16)
BASE_TAG=$BASE_REF-$BASE_KEY
BASE_TAR=$CACHE/base/$SUITE-$BASE_KEY.rootfs.tar
if [[ ! -f $BASE_TAR ]]; then
  release=$MIRROR/dists/$SUITE/Release
  if command -v curl >/dev/null; then curl -fsSI --max-time 30 "$release" >/dev/null || cannot "Debian mirror unreachable: $release"
  elif command -v wget >/dev/null; then wget -q --spider --timeout=30 "$release" || cannot "Debian mirror unreachable: $release"; fi
  log "base: debootstrap --variant=minbase $SUITE (about 30 s), then $BASE_PACKAGES"
  R=$TMP/rootfs
  debootstrap --variant=minbase "$SUITE" "$R" "$MIRROR" > "$TMP/debootstrap.log" 2>&1 \
    || { tail -20 "$TMP/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
  cp /etc/resolv.conf "$R/etc/resolv.conf"
  printf '#!/bin/sh\nexit 101\n' > "$R/usr/sbin/policy-rc.d"; chmod +x "$R/usr/sbin/policy-rc.d"
  # shellcheck disable=SC2016
  chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 sh -ec '
    apt-get install -y --no-install-recommends '"$BASE_PACKAGES"'
    python3 -m venv /usr/local/python
    /usr/local/python/bin/pip --version
    apt-get clean
    rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old /var/lib/dpkg/*-old \
           /usr/share/doc/* /usr/share/man/* /usr/share/info/* /usr/share/locale/* /var/log/* /root/.cache \
           /usr/sbin/policy-rc.d' > "$TMP/chroot.log" 2>&1 \
    || { tail -20 "$TMP/chroot.log" >&2; die "installing $BASE_PACKAGES in the chroot failed (log above)"; }
  : > "$R/etc/resolv.conf"
  rm -rf "${R:?}"/dev/* "${R:?}"/tmp/* "${R:?}"/run/*
  mkdir -p "$CACHE/base"
  tar --numeric-owner --xattrs -C "$R" -cf "$BASE_TAR.partial" .
  mv -f "$BASE_TAR.partial" "$BASE_TAR"
  rm -rf --one-file-system "$R"
  find "$CACHE/base" -name '*.rootfs.tar' ! -path "$BASE_TAR" -delete
  log "base: rootfs $(du -m "$BASE_TAR" | cut -f1) MB"
fi
if ! have_image "$BASE_TAG"; then
  log "base: committing $BASE_TAG"
  c=$("${B[@]}" from --pull-never scratch)
  (cd "$(dirname "$BASE_TAR")" && "${B[@]}" add "$c" "$(basename "$BASE_TAR")" /) >&2
  # What python:3.11-slim sets that matters here: the interpreter's bin first on PATH, a UTF-8 locale, CMD python3.
  "${B[@]}" config --os linux --arch amd64 \
    --env PATH=/usr/local/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd python3 "$c"
  "${B[@]}" commit -q --rm "$c" "$BASE_TAG" >/dev/null
fi
"${B[@]}" tag "$BASE_TAG" "$BASE_REF"

# --- 2. agentfleet: a snapshot of the build inputs, keyed by their content --------------------------------------
VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$REPO/operator/agentfleet/__init__.py")
[[ -n $VERSION ]] || die "no __version__ in operator/agentfleet/__init__.py"
AF_REF=ghcr.io/agentfleet/agentfleet:$VERSION
CTX=$TMP/context
mkdir -p "$CTX"
(
  cd "$REPO"
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -co --exclude-standard -- pyproject.toml README.md operator images/Dockerfile
  else
    find pyproject.toml README.md operator images/Dockerfile -type f ! -path '*/__pycache__/*' \
      ! -path '*.egg-info/*' ! -name '*.pyc' 2>/dev/null
  fi | sort -u | while IFS= read -r f; do if [[ -f $f ]]; then printf '%s\n' "$f"; fi; done \
    | tar -cf - -T - | tar -C "$CTX" -xf -
)
[[ -f $CTX/images/Dockerfile && -f $CTX/pyproject.toml ]] || die "snapshot of the build context is incomplete"
# The dependency list the wheelhouse holds; the base image's python reads pyproject.toml (tomllib, 3.11).
REQS=$TMP/reqs/requirements.txt
mkdir -p "$TMP/reqs"
c=$("${B[@]}" from --pull-never "$BASE_TAG")
"${B[@]}" run --isolation chroot -v "$CTX/pyproject.toml:/tmp/pyproject.toml:ro" -v "$TMP/reqs:/out" "$c" -- python3 -c '
import sys, tomllib
p = tomllib.load(open("/tmp/pyproject.toml", "rb"))
reqs = list(p["project"]["dependencies"])
for e in filter(None, (e.strip() for e in sys.argv[1].split(","))):
    reqs += p["project"].get("optional-dependencies", {})[e]
open("/out/requirements.txt", "w").write("\n".join(reqs) + "\n")
open("/out/build-requires.txt", "w").write("\n".join(p["build-system"]["requires"]) + "\n")
' "$EXTRAS" >&2 || die "reading the dependencies of pyproject.toml failed (EXTRAS=$EXTRAS)"
"${B[@]}" rm "$c" >/dev/null
WH_KEY=$(cat "$REQS" "$TMP/reqs/build-requires.txt" <(echo "$BASE_KEY $RECIPE") | sha | cut -c1-16)
AF_KEY=$( (cd "$CTX" && find . -type f | LC_ALL=C sort | while IFS= read -r f; do printf '%s  ' "$f"; sha < "$f"; done
           echo "extras=$EXTRAS base=$BASE_KEY recipe=$RECIPE wheelhouse=$([[ $WHEELHOUSE_ON == 1 ]] && echo "$WH_KEY")") \
         | sha | cut -c1-16)
AF_TAR=$OUT/agentfleet-$AF_KEY.tar
if fresh "$AF_TAR"; then
  log "agentfleet: $AF_REF is up to date (key $AF_KEY)"
else
  BUD_MOUNTS=()
  if [[ $WHEELHOUSE_ON == 1 ]]; then
    WH=$CACHE/wheelhouse/$WH_KEY
    if [[ ! -f $WH/.complete ]]; then
      log "agentfleet: resolving $(wc -l < "$REQS") requirements into a wheelhouse (PyPI)"
      rm -rf "$WH.partial"; mkdir -p "$WH.partial"
      ca=(); [[ -f $HOST_CA ]] && ca=(-v "$HOST_CA:/etc/ssl/certs/ca-certificates.crt:ro")
      c=$("${B[@]}" from --pull-never "$BASE_TAG")
      "${B[@]}" run --isolation chroot "${ca[@]}" -v "$WH.partial:/wheelhouse" -v "$REQS:/tmp/requirements.txt:ro" \
        -v "$TMP/reqs/build-requires.txt:/tmp/build-requires.txt:ro" "$c" -- sh -ec '
          export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
          pip wheel -q --wheel-dir /wheelhouse -r /tmp/requirements.txt
          pip wheel -q --wheel-dir /wheelhouse -r /tmp/build-requires.txt' >&2 \
        || { "${B[@]}" rm "$c" >/dev/null; die "pip could not fill the wheelhouse (PyPI reachable?)"; }
      "${B[@]}" rm "$c" >/dev/null
      rm -f "$WH.partial"/agentfleet-*.whl
      touch "$WH.partial/.complete"
      rm -rf "$WH"; mv "$WH.partial" "$WH"
      find "$CACHE/wheelhouse" -mindepth 1 -maxdepth 1 ! -path "$WH" -exec rm -rf {} +
    fi
    # Mounted read-only over /root (which the base has) during the build only: HOME's pip.conf + the wheels.
    PIPHOME=$TMP/piphome
    mkdir -p "$PIPHOME/.config/pip"
    cp -al "$WH" "$PIPHOME/wheelhouse" 2>/dev/null || cp -a "$WH" "$PIPHOME/wheelhouse"
    printf '[global]\nno-index = true\nfind-links = /root/wheelhouse\n' > "$PIPHOME/.config/pip/pip.conf"
    BUD_MOUNTS=(-v "$PIPHOME:/root:ro")
    log "agentfleet: building $AF_REF from images/Dockerfile (offline, wheelhouse $WH_KEY)"
  else
    [[ -f $HOST_CA ]] && BUD_MOUNTS=(-v "$HOST_CA:/etc/ssl/certs/ca-certificates.crt:ro")
    log "agentfleet: building $AF_REF from images/Dockerfile (pip online)"
  fi
  t0=$SECONDS
  (cd "$CTX" && "${B[@]}" bud --isolation chroot --layers=false --pull=never --format docker "${BUD_MOUNTS[@]}" \
     -f images/Dockerfile --build-arg "PYTHON_IMAGE=$BASE_TAG" --build-arg "EXTRAS=$EXTRAS" \
     --label "org.agentfleet.build-key=$AF_KEY" -t "$AF_REF" . ) > "$TMP/bud.log" 2>&1 \
    || { tail -40 "$TMP/bud.log" >&2; die "buildah bud failed (log above)"; }
  log "agentfleet: built in $((SECONDS - t0)) s"
  export_archive "$AF_REF" "$AF_TAR"
  "${B[@]}" rmi --prune >/dev/null 2>&1 || true   # the previous build's image, untagged now
fi

# --- 3. optional: import into a throwaway containerd and run each image ------------------------------------------
if [[ $CHECK == 1 ]]; then
  if ! command -v containerd >/dev/null || ! command -v ctr >/dev/null; then die "--check needs containerd and ctr"; fi
  D=$TMP/containerd; mkdir -p "$D"
  cat > "$D/config.toml" <<EOF
version = 2
root = "$D/root"
state = "$D/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$D/c.sock"
[ttrpc]
  address = "$D/c.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$D/opt"
EOF
  containerd --config "$D/config.toml" > "$D/log" 2>&1 &
  CPID=$!
  trap 'kill $CPID 2>/dev/null; wait $CPID 2>/dev/null; cleanup' EXIT
  C=(ctr -a "$D/c.sock" -n k8s.io)
  for _ in $(seq 50); do "${C[@]}" version >/dev/null 2>&1 && break; sleep 0.2; done
  log "check: import $AF_TAR"; "${C[@]}" images import "$AF_TAR" >&2
  "${C[@]}" images ls -q >&2
  log "check: agentfleet --help as $AF_REF"
  "${C[@]}" run --rm "$AF_REF" af-check agentfleet --help >/dev/null || die "check: agentfleet --help failed"
  "${C[@]}" run --rm "$AF_REF" af-check2 python -c 'import agentfleet.runtime, agentfleet.router, agentfleet.control' \
    || die "check: importing the runtime, router and operator failed"
  log "check: the image imports and runs"
fi

echo "$AF_REF=$AF_TAR"
