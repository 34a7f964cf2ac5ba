#!/usr/bin/env bash
# Crate hygiene, run by scripts/test.sh:
#   * every feature builds on its own (cargo hack --each-feature);
#   * licences, banned crates and sources pass `cargo deny` (deny.toml);
#   * `cargo package` ships only what users need (no tests, fixtures, fuzz or CI files);
#   * `rust-version` is honest: no dependency in the lockfile needs a newer compiler.
# Installs cargo-hack and cargo-deny with `cargo install --locked` when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

for tool in cargo-hack cargo-deny; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        log "$tool not found: installing it (cargo install --locked $tool)"
        cargo install --locked "$tool"
    fi
done

log "each feature on its own (cargo hack --each-feature check)"
cargo hack check --each-feature --no-dev-deps

log "cargo deny check licenses bans sources"
cargo deny --workspace --all-features check licenses bans sources

log "cargo package ships only what users need"
listing=$(cargo package --list --allow-dirty 2>/dev/null)
if printf '%s\n' "$listing" | grep -E '^(tests|fuzz|scripts|\.ci|target|ecosystem)/' ; then
    echo "error: the package would ship the files above" >&2
    exit 1
fi
for needed in src/lib.rs README.md LICENSE CHANGELOG.md Cargo.toml; do
    printf '%s\n' "$listing" | grep -qx "$needed" || { echo "error: $needed missing from the package" >&2; exit 1; }
done

log "rust-version holds for the lockfile's dependencies"
declared=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
cargo tree --all-features -e normal,build --prefix none --target "$(rustc -vV | sed -n 's/host: //p')" \
    | awk '{print $1" "$2}' | sort -u > target/crate_check_used.txt
cargo metadata --format-version 1 --all-features | python3 -c '
import json, sys
declared = tuple(int(x) for x in sys.argv[1].split("."))
used = set(tuple(l.split()) for l in open("target/crate_check_used.txt"))
meta = json.load(sys.stdin)
worst = []
for p in meta["packages"]:
    rv = p.get("rust_version")
    if rv and (p["name"], "v" + p["version"]) in used:
        need = tuple(int(x) for x in rv.split("."))[:2]
        if need > declared[:2]:
            worst.append("%s %s needs %s" % (p["name"], p["version"], rv))
if worst:
    sys.exit("rust-version " + sys.argv[1] + " is too old for: " + ", ".join(worst))
print("rust-version", sys.argv[1], "covers every dependency that is built")
' "$declared"
