#!/usr/bin/env bash
# Render an HTML report from `python -m mlp_sweep.compare --html FILE` to a PNG, as a browser shows it.
#   scripts/screenshot_report.sh report.html report.png [WIDTHxHEIGHT]
# Needs Debian's chromium package (apt-get install chromium); nothing is fetched from the network.
exec "$(dirname "$0")/screenshot_page.sh" "$@"
