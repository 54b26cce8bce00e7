#!/usr/bin/env bash
# Installs inferno-flamegraph (crates.io) so that
# tests/test_report_formats.py::test_inferno_renders_the_report runs instead
# of skipping: it renders leak_report(format="collapsed") to SVG.
# Without the default "multithreaded" and "nameattr" features: the CLI alone.
set -euo pipefail
if command -v inferno-flamegraph >/dev/null || [ -x "$HOME/.cargo/bin/inferno-flamegraph" ]; then
    exit 0
fi
cargo install inferno --locked --no-default-features --features cli
