#!/bin/sh
# Boots a throwaway systemd container over a copy-on-write view of this machine's root file
# system, runs slicewalld in it as a service and tests it against real units. Needs root.
# Arguments select cases by name, as in `tests/systemd.sh restart`.
set -eu
cd "$(dirname "$0")/.."
tests/install-deps.sh
cargo build --locked --example probe
exec cargo test --locked --test systemd -- "$@"
