#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian bookworm machine of the kind the project runs on, as root:
# OS packages (bcc and its tools, kernel headers, nftables, bpftool, Prometheus, Alertmanager,
# PostgreSQL, chromium for the incident page test), kernel headers reachable
# for bcc when the running kernel ships none, tracefs mounted, the project's venv in .venv/ with
# the OS's bcc module importable from it, and the project installed editable with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV="$ROOT/.venv"
STAMP="$VENV/.setup-done"

log() { echo "setup: $*"; }
# shellcheck source=scripts/packages.sh
source "$ROOT/scripts/packages.sh"

if [[ $(id -u) -ne 0 ]]; then
    echo "setup: must run as root (bcc loads eBPF programs; apt installs packages)" >&2
    exit 1
fi

# --- OS packages -----------------------------------------------------------------------------
ensure_packages setup bpfcc-tools python3-bpfcc libbpfcc linux-headers-amd64 nftables bpftool iproute2 \
    prometheus prometheus-alertmanager postgresql chromium fonts-dejavu-core

# --- kernel headers for bcc ------------------------------------------------------------------
# bcc compiles against /lib/modules/$(uname -r)/build. When the running kernel has no headers
# of its own, point it at the distribution's headers (tracepoint programs only read tracepoint
# arguments, so a different header version is safe for them).
KREL=$(uname -r)
if [[ ! -e "/lib/modules/$KREL/build/include" ]]; then
    hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1 || true)
    common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -1 || true)
    if [[ -z "$hdr" || -z "$common" ]]; then
        echo "setup: no kernel headers under /usr/src; install linux-headers-amd64" >&2
        exit 1
    fi
    log "linking kernel headers $hdr for $KREL"
    mkdir -p "/lib/modules/$KREL"
    ln -sfn "$hdr" "/lib/modules/$KREL/build"
    ln -sfn "$common" "/lib/modules/$KREL/source"
fi

# --- tracefs ---------------------------------------------------------------------------------
if [[ ! -e /sys/kernel/tracing/events ]]; then
    mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || true
fi
if [[ ! -e /sys/kernel/tracing/events ]] && [[ ! -e /sys/kernel/debug/tracing/events ]]; then
    mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || true
fi

# --- venv ------------------------------------------------------------------------------------
PYTHON=${PYTHON:-}
if [[ -z "$PYTHON" ]]; then
    for cand in python3.11 python3 /usr/bin/python3; do
        if command -v "$cand" >/dev/null && "$cand" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            PYTHON=$(command -v "$cand"); break
        fi
    done
fi
if [[ -z "$PYTHON" ]]; then
    log "installing python3-venv"
    apt-get install -y -qq python3-venv >/dev/null
    PYTHON=/usr/bin/python3
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi

# bcc's Python module is pure Python over libbcc.so and lives in the OS's dist-packages. Expose
# only it (not the rest of dist-packages) to the venv: a folder holding a link named bcc.
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
BCC_SRC=$(ls -d /usr/lib/python3/dist-packages/bcc 2>/dev/null || true)
if [[ -z "$BCC_SRC" ]]; then
    echo "setup: python3-bpfcc did not install /usr/lib/python3/dist-packages/bcc" >&2
    exit 1
fi
mkdir -p "$VENV/os-bcc"
ln -sfn "$BCC_SRC" "$VENV/os-bcc/bcc"
echo "$VENV/os-bcc" > "$SITE/os-bcc.pth"

# --- the project -----------------------------------------------------------------------------
HASH=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ ! -f "$STAMP" ]] || [[ $(cat "$STAMP") != "$HASH" ]]; then
    log "installing the project into $VENV"
    if ! { "$VENV/bin/python" -m pip install -q --upgrade pip &&
           "$VENV/bin/python" -m pip install -q -e ".[test,lab]"; } >"$VENV/pip.log" 2>&1; then
        cat "$VENV/pip.log" >&2
        echo "setup: pip install failed (log above, also in $VENV/pip.log)" >&2
        exit 1
    fi
    echo "$HASH" > "$STAMP"
fi
"$VENV/bin/python" -c 'import bcc, aiohttp, yaml' || { echo "setup: venv imports failed" >&2; exit 1; }
log "ready"
