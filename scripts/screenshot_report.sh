#!/usr/bin/env bash
# Render an HTML report from `python -m mlp_sweep.compare --html FILE` to a PNG, as a browser shows it.
#   scripts/screenshot_report.sh report.html report.png [WIDTHxHEIGHT]
# Needs Debian's chromium package (apt-get install chromium); nothing is fetched from the network.
set -euo pipefail
report=$(realpath "$1"); out=$(realpath -m "$2"); size=${3:-1400x2400}
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --hide-scrollbars --window-size="${size/x/,}" \
  --screenshot="$out" "file://$report" 2>/dev/null
echo "wrote $out"
