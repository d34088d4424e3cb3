#!/usr/bin/env bash
# Set up everything `make run` and `make test` need on a fresh Debian 12 machine:
# Debian packages (etcd, libvirt headers), a Python 3.11 venv in .venv and the
# project with its dev dependencies. Idempotent and quick when nothing is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: etcd for the controller; libvirt headers for libvirt-python;
# the real storage servers and userspace clients the test suite runs (docs/lab.md);
# chromium for the status page's browser test (headless, driven over its DevTools pipe).
debs=(etcd-server etcd-client libvirt-dev pkg-config gcc
      e2fsprogs xfsprogs uuid-runtime
      nfs-ganesha nfs-ganesha-vfs libnfs13 libnfs-utils
      tgt libiscsi7 libiscsi-bin
      ceph-mon ceph-mgr ceph-osd ceph-common python3-rados python3-rbd
      chromium)
need_apt=()
for deb in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$deb" 2>/dev/null | grep -q "ok installed" || need_apt+=("$deb")
done

PY=""
for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1 && \
       "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
        PY=$(command -v "$cand"); break
    fi
done
if [[ -z "$PY" ]]; then
    need_apt+=(python3.11 python3.11-venv python3.11-dev)
elif [[ "$PY" == /usr/bin/* ]]; then
    "$PY" -c 'import ensurepip' 2>/dev/null || need_apt+=(python3.11-venv)
    [[ -f "/usr/include/python3.11/Python.h" ]] || need_apt+=(python3.11-dev)
fi

if (( ${#need_apt[@]} )); then
    echo "bootstrap: installing Debian packages: ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO=sudo
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
[[ -n "$PY" ]] || PY=$(command -v python3.11)

if [[ ! -x .venv/bin/python ]]; then
    echo "bootstrap: creating .venv with $PY"
    "$PY" -m venv .venv
fi
stamp=.venv/.bootstrap-stamp
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
    echo "bootstrap: installing Python packages into .venv"
    log=.venv/bootstrap-pip.log
    if ! { .venv/bin/python -m pip install --upgrade pip &&
           .venv/bin/python -m pip install -e '.[dev]'; } >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "bootstrap: pip install failed; full log in $log" >&2
        exit 1
    fi
    touch "$stamp"
fi
# Debian's python3-rados/python3-rbd, made importable from the venv (idempotent).
scripts/link-debian-ceph.sh .venv
