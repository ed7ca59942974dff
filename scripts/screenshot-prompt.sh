#!/bin/sh
# Takes a screenshot of slicewall-agent's notification to docs/prompt.png.
#
# Runs Xvfb, the dunst notification server and `slicewall-agent --preview` on a private
# session bus, then captures the screen with ImageMagick's `import`. --preview shows a sample
# prompt built by the agent's own formatting code, so no slicewalld is needed.
# Installs xvfb, dunst, imagemagick and dbus when they are missing (Debian, as root).
set -eu

cd "$(dirname "$0")/.."
output=docs/prompt.png

missing=""
command -v Xvfb >/dev/null || missing="$missing xvfb"
command -v dunst >/dev/null || missing="$missing dunst"
command -v import >/dev/null || missing="$missing imagemagick"
command -v dbus-daemon >/dev/null || missing="$missing dbus"
if [ -n "$missing" ]; then
    apt-get install --yes --no-install-recommends $missing
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

# A dunstrc wide enough for the body. dunst lists the buttons in its context menu, not in the
# notification, and marks a notification that has them with "(A)".
cat >"$work/dunstrc" <<'CONF'
[global]
    width = 700
    height = 300
    origin = top-right
    offset = 10x10
    font = DejaVu Sans 11
    format = "<b>%s</b>\n%b"
    show_indicators = yes
    frame_width = 2
[urgency_critical]
    background = "#2b2b2b"
    foreground = "#ffffff"
    frame_color = "#d08770"
    timeout = 0
CONF
dunst -config "$work/dunstrc" >"$work/dunst.log" 2>&1 &
pids="$pids $!"
sleep 1

target/debug/slicewall-agent --preview >"$work/agent.log" 2>&1 &
pids="$pids $!"
sleep 2

mkdir -p docs
import -window root "$output"
echo "wrote $output"
