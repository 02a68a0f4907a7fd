#!/usr/bin/env bash
# deploy/debian/build.sh - build the Debian package into target/debian/.
#
# Builds the release binary, generates from it the man pages and the
# shell completions (`sipedge generate`), writes the systemd unit with
# the packaged binary's path (/usr/bin), then runs `cargo deb` on them
# (Cargo.toml, [package.metadata.deb]). Prints the .deb's path last.
# Needs cargo-deb (`cargo install --locked cargo-deb`) and binutils (strip).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
command -v cargo-deb >/dev/null 2>&1 || {
    echo "build.sh: cargo-deb is needed: cargo install --locked cargo-deb" >&2
    exit 1
}

cargo build --release --locked
ASSETS=target/assets
rm -rf "$ASSETS"
mkdir -p "$ASSETS"
target/release/sipedge generate man "$ASSETS/man"
target/release/sipedge generate completions "$ASSETS/completions"
# The unit in deploy/ is written for a hand install in /usr/local/bin.
sed 's#/usr/local/bin/sipedge#/usr/bin/sipedge#g' deploy/sipedge.service >"$ASSETS/sipedge.service"
if grep -n '/usr/local' "$ASSETS/sipedge.service" >&2; then
    echo "build.sh: the unit still names /usr/local (above)" >&2
    exit 1
fi

cargo deb --no-build --locked --output target/debian/ | tail -n 1
