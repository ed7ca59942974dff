#!/bin/sh
# Runs the whole test suite: unit tests, and the privileged integration tests that build their
# own cgroups, network namespaces and bpf file systems (as root; they skip, saying why, otherwise).
set -eu
cd "$(dirname "$0")/.."
tests/install-deps.sh
# The integration tests each start a daemon and real clients; two at a time suit small machines.
exec cargo test --locked -- --test-threads="${SLICEWALL_TEST_THREADS:-2}"
