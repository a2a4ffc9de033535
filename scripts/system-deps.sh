#!/usr/bin/env bash
# Debian packages the test suite needs beyond Python: promtool (from the
# `prometheus` package) checks and unit-tests the chart's alert rules.
# Idempotent: installs only what is missing, and runs apt-get update at most once.
set -euo pipefail

declare -A want=(
    [promtool]=prometheus
)

missing=()
for cmd in "${!want[@]}"; do
    command -v "$cmd" >/dev/null 2>&1 || missing+=("${want[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
        echo "error: need root (or sudo) to install: ${missing[*]}" >&2
        exit 1
    fi
else
    SUDO=
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
