#!/usr/bin/env bash
# The toolchains `zen-coder eval` runs MultiPL-E programs with, from Debian packages: only the
# missing ones are installed, so a second run costs a second. Needs root (or sudo); elsewhere it
# says what to install and exits 0, and `zen-coder eval` skips the languages it cannot run.
set -euo pipefail
PACKAGES=(
    python3 nodejs node-typescript golang-go rustc openjdk-17-jdk-headless libjavatuples-java
    g++ php-cli ruby
)

if ! command -v dpkg-query >/dev/null || ! command -v apt-get >/dev/null; then
    echo "install_runtimes: not a Debian system; install the toolchains of: ${PACKAGES[*]}"
    exit 0
fi

missing=()
for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    run=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    run=(sudo)
else
    echo "install_runtimes: not root; to run every MultiPL-E language: apt-get install ${missing[*]}"
    exit 0
fi
echo "install_runtimes: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${run[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null \
    || { "${run[@]}" apt-get update >/dev/null \
         && "${run[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null; }
