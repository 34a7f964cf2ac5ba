#!/usr/bin/env bash
# The whole test suite, as CI runs it. Works on a fresh machine: installs what the tests need
# when it is missing and it can (redis-server, redis-cli and prometheus from Debian's packages,
# as root).
#
#   scripts/test.sh            fmt check, clippy -D warnings, docs, crate hygiene
#                              (scripts/crate_check.sh), tests (all features, and none), and the
#                              observability check against a real Prometheus
#
# Environment:
#   SKIP_LINT=1                skip fmt/clippy/doc (quick local runs)
#   LAYERCACHE_TEST_SERVER     redis (default) or valkey: the server the Redis tests start
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/lib.sh
. scripts/lib.sh

# Disk. A run builds about 30 test binaries in three feature sets. With cargo's defaults that
# took 13 GB on a fresh clone (3.3 GB without) (6 GB of incremental caches no one reuses, and full debug info
# making each test binary ~140 MB), more than some CI machines have free. A run builds each
# target once, so it turns incremental off, and keeps line tables only: a panic's backtrace
# still names file and line. Set either variable yourself to override.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-line-tables-only}"
export CARGO_PROFILE_TEST_DEBUG="${CARGO_PROFILE_TEST_DEBUG:-line-tables-only}"
target_dir="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target_dir"
free_kb=$(df -Pk "$target_dir" | awk 'NR==2 {print $4}')
log "free disk where cargo builds ($target_dir): $((free_kb / 1024)) MiB (a fresh run peaks at about 3.5 GB)"
if [ "${free_kb:-0}" -lt $((4 * 1024 * 1024)) ]; then
    echo "warning: under 4 GiB free for $target_dir; the build may fail with 'No space left on device'." >&2
    echo "         Free space there, or set CARGO_TARGET_DIR to a disk with room." >&2
fi

ensure_redis() {
    if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
        return
    fi
    apt_install "redis-server (Redis 6.2+)" redis-server redis-tools
    # Tests start their own servers on free ports; the distribution's service is not needed.
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo systemctl disable --now redis-server >/dev/null 2>&1 || true
}

# The TLS tests make their certificates with the openssl command line.
ensure_openssl() {
    command -v openssl >/dev/null 2>&1 || apt_install openssl openssl
}

# Valkey 8 for the second run of the Redis test files. Debian bookworm has it in
# bookworm-backports: that suite is added from the machine's own Debian mirror.
ensure_valkey() {
    if command -v valkey-server >/dev/null 2>&1 && command -v valkey-cli >/dev/null 2>&1; then
        return
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    local codename
    codename=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
    if [ "$codename" = "bookworm" ] && ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
        local mirror
        # The mirror serving Debian's main archive (a URI ending in /debian), not security or
        # third-party repositories.
        mirror=$(grep -rhs '^URIs:' /etc/apt/sources.list.d/ | awk '{print $2}' | grep -E '/debian/?$' | head -1 || true)
        [ -n "$mirror" ] || mirror=$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' | grep -E '/debian/?$' | head -1 || true)
        [ -n "$mirror" ] || mirror="http://deb.debian.org/debian"
        log "adding bookworm-backports from $mirror (for Valkey 8)"
        printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$mirror" \
            | $sudo tee /etc/apt/sources.list.d/layercache-backports.sources >/dev/null
    fi
    if [ "$codename" = "bookworm" ]; then
        apt_install "valkey-server (Valkey 8)" -t bookworm-backports valkey-server valkey-tools
    else
        apt_install "valkey-server (Valkey 8)" valkey-server valkey-tools
    fi
    $sudo systemctl disable --now valkey-server >/dev/null 2>&1 || true
    pkill -x valkey-server >/dev/null 2>&1 || true
}

ensure_redis
ensure_openssl
ensure_valkey
valkey-server --version
redis-server --version

if [ "${SKIP_LINT:-0}" != "1" ]; then
    log "rustfmt"
    cargo fmt --all -- --check
    log "clippy (the workspace: every target, all features, -D warnings)"
    cargo clippy --workspace --all-targets --all-features -- -D warnings
    log "clippy (no default features)"
    cargo clippy --all-targets --no-default-features -- -D warnings
    log "rustdoc (warnings are errors)"
    RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --all-features
    log "crate hygiene: each feature alone, cargo deny, package contents, rust-version"
    scripts/crate_check.sh
fi

log "tests, all features"
cargo test --all-features
log "the ecosystem member: tests beside redis-rs, proptest, axum + reqwest; its examples build"
cargo test -p layercache-ecosystem
log "the Redis test files again, on Valkey 8 (LAYERCACHE_TEST_SERVER=valkey)"
LAYERCACHE_TEST_SERVER=valkey cargo test --all-features --test redis --test redis_cluster \
    --test redis_faults --test redis_proxy --test redis_pause --test redis_failover \
    --test redis_bomb --test redis_tls --test redis_connect --test fleet --test fleet_outage \
    --test fleet_tags --test field --test batch \
    --test fleet_recovery --test fleet_late_writes --test layered_races --test deploy \
    --test fleet_scale --test redis_burst
log "memory and load tests on the quick_cache engine"
LAYERCACHE_TEST_ENGINE=quick-cache cargo test --all-features --test memory --test load --test cancellation --test contract --test layered_races
log "tests, no default features"
cargo test --no-default-features
log "every test, example and benchmark builds with the default features (plain \`cargo test\`)"
cargo check --all-targets
log "every benchmark builds (the ecosystem member)"
cargo check -p layercache-ecosystem --all-targets
log "observability: the example scraped by a real Prometheus, rules and dashboard names checked"
scripts/observability_test.sh
log "all tests passed"
