#!/usr/bin/env bash
# link-debian-ceph.sh VENV -- make Debian's rados/rbd Python modules importable in VENV.
#
# Ceph publishes no rados/rbd bindings on PyPI. Debian's python3-rados and
# python3-rbd are C extensions built for the system Python 3.11; they load in
# any CPython 3.11 (same ABI), e.g. a pyenv 3.11.x venv (docs/lab.md, Ceph RBD).
# Adding all of /usr/lib/python3/dist-packages to the venv would drag in every
# Debian Python package, so only the two extension modules are linked into a
# directory of their own (VENV/debian-ceph/) and a .pth file names it.
#
# Idempotent: re-running replaces the links and the .pth file with the same
# content. When the Debian modules are not installed it prints a note and
# exits 0 (the ceph_rbd backend then reports itself unavailable), so bootstrap
# works on machines without Ceph.
set -euo pipefail

VENV=${1:?usage: link-debian-ceph.sh VENV}
DIST=${DEBIAN_DIST_PACKAGES:-/usr/lib/python3/dist-packages}
MODULES=(rados rbd)

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "link-debian-ceph: $VENV is not a virtualenv (no bin/python)" >&2
    exit 1
fi

# The extension suffix the venv's interpreter loads (cpython-311-x86_64-linux-gnu).
suffix=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')

sources=()
for mod in "${MODULES[@]}"; do
    src="$DIST/$mod$suffix"
    if [[ ! -f "$src" ]]; then
        echo "link-debian-ceph: note: $src not found; install Debian python3-rados and" \
             "python3-rbd to use the ceph_rbd backend (skipping)"
        exit 0
    fi
    sources+=("$src")
done

shim="$VENV/debian-ceph"
mkdir -p "$shim"
for src in "${sources[@]}"; do
    ln -sfn "$src" "$shim/$(basename "$src")"
done
pth="$site/debian-ceph.pth"
want=$(realpath "$shim")
if [[ ! -f "$pth" || "$(cat "$pth")" != "$want" ]]; then
    printf '%s\n' "$want" >"$pth"
fi

if ! "$VENV/bin/python" -c 'import rados, rbd' 2>/dev/null; then
    echo "link-debian-ceph: linked, but 'import rados, rbd' fails in $VENV:" >&2
    "$VENV/bin/python" -c 'import rados, rbd' >&2 || true
    exit 1
fi
