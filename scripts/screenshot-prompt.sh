#!/bin/sh
# Takes a screenshot of a real prompt to docs/prompt.png: boots the end-to-end harness's
# container (tests/systemd.rs), where slicewalld holds a flow that an ask rule covers and the test
# user's slicewall-agent shows the prompt on dunst under Xvfb, and captures the screen with
# ImageMagick's `import`. Needs root, like the harness.
#
# `--preview` instead shows a sample prompt with `slicewall-agent --preview` on this machine,
# without a daemon.
# Installs xvfb, dunst, imagemagick and dbus when they are missing (Debian, as root).
set -eu

cd "$(dirname "$0")/.."
output="$PWD/docs/prompt.png"

missing=""
command -v Xvfb >/dev/null || missing="$missing xvfb"
command -v dunst >/dev/null || missing="$missing dunst"
command -v import >/dev/null || missing="$missing imagemagick"
command -v dbus-daemon >/dev/null || missing="$missing dbus"
if [ -n "$missing" ]; then
    apt-get install --yes --no-install-recommends $missing
fi
mkdir -p docs

if [ "${1:-}" != "--preview" ]; then
    tests/install-deps.sh
    cargo build --examples
    SLICEWALL_SCREENSHOT="$output" cargo test --test systemd -- prompt_screenshot
    echo "wrote $output"
    exit 0
fi

cargo build --bin slicewall-agent

work=$(mktemp -d)
pids=""
cleanup() {
    for pid in $pids; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

display=:97
Xvfb "$display" -screen 0 1024x400x24 -nolisten tcp >"$work/xvfb.log" 2>&1 &
pids="$pids $!"
export DISPLAY="$display"

dbus-daemon --session --nofork --address="unix:path=$work/bus" >"$work/bus.log" 2>&1 &
pids="$pids $!"
export DBUS_SESSION_BUS_ADDRESS="unix:path=$work/bus"
sleep 1

dunst -config scripts/dunstrc >"$work/dunst.log" 2>&1 &
pids="$pids $!"
sleep 1

target/debug/slicewall-agent --preview >"$work/agent.log" 2>&1 &
pids="$pids $!"
sleep 2

import -window root "$output"
echo "wrote $output"
