#!/bin/sh
# Installs what building and testing slicewall needs on Debian or Ubuntu, when it is missing:
# clang and the kernel and libbpf headers for the eBPF programs, iproute2 for the test labs,
# curl for the short-lived client test, nftables for the socket-destroy test, systemd's
# journald for the journal test, and systemd-nspawn (systemd-container) and socat for the
# end-to-end test under a booted systemd.
set -eu

missing=""
command -v clang >/dev/null 2>&1 || missing="$missing clang"
[ -e /usr/include/bpf/bpf_helpers.h ] || missing="$missing libbpf-dev"
[ -e /usr/include/linux/bpf.h ] || missing="$missing linux-libc-dev"
command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
command -v curl >/dev/null 2>&1 || missing="$missing curl"
command -v nft >/dev/null 2>&1 || missing="$missing nftables"
command -v journalctl >/dev/null 2>&1 || missing="$missing systemd"
[ -x /lib/systemd/systemd-journald ] || missing="$missing systemd"
command -v systemd-nspawn >/dev/null 2>&1 || missing="$missing systemd-container"
command -v socat >/dev/null 2>&1 || missing="$missing socat"

if [ -n "$missing" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-deps: missing:$missing; run this script as root to install them" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing
fi
command -v cargo >/dev/null 2>&1 || {
    echo "install-deps: cargo is missing; install Rust 1.85 or newer with rustup (Debian 12's own rustc is too old)" >&2
    exit 1
}
