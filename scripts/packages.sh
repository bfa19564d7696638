# Sourced by the set-up scripts: install the Debian packages named that are not installed yet.
#   ensure_packages WHAT PKG...   (WHAT names them in the one line it prints)
ensure_packages() {
    local what=$1 p
    shift
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    ((${#missing[@]})) || return 0
    echo "$what: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    local out
    out=$(mktemp)
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$out" 2>&1; then
        cat "$out" >&2
        rm -f "$out"
        echo "$what: installing ${missing[*]} failed (apt's output above)" >&2
        return 1
    fi
    rm -f "$out"
}
