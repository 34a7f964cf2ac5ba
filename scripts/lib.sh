# Helpers shared by scripts/test.sh and scripts/bench.sh (sourced, not run).

log() { printf '\n==> %s\n' "$*"; }

# Install Debian packages `$2…` (what is missing: `$1`), or fail saying what to install.
apt_install() {
    local what="$1"; shift
    log "$what not found: installing it from Debian's packages ($*)"
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: $what is missing and apt-get is unavailable; install $* and rerun" >&2
        exit 1
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}
