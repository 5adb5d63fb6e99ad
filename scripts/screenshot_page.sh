#!/usr/bin/env bash
# Render a page as headless Chromium shows it, JavaScript included: to a PNG, or its DOM to a file.
#   scripts/screenshot_page.sh URL|FILE.html out.png [WIDTHxHEIGHT]   a screenshot
#   scripts/screenshot_page.sh URL|FILE.html out.html                 the DOM after the scripts ran
# e.g. scripts/screenshot_page.sh http://127.0.0.1:8080/dashboard/studies/1 dashboard.png 1280x900
# Needs Debian's chromium package (apt-get install chromium); nothing is fetched but the page and
# the files its own server sends.
set -euo pipefail
case $1 in
  http://* | https://*) url=$1 ;;
  *) url="file://$(realpath "$1")" ;;
esac
out=$(realpath -m "$2"); size=${3:-1400x2400}
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
# --virtual-time-budget: a JS app (optuna-dashboard) gets 15 s of page time to fetch its data and
# draw its charts before the shot; the clock runs fast, so a page that is done sooner costs no wait.
browser=(chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run
  --disable-background-networking --disable-component-update --disable-sync
  --user-data-dir="$profile" --hide-scrollbars --window-size="${size/x/,}"
  --virtual-time-budget=15000)
case $out in
  *.png) "${browser[@]}" --screenshot="$out" "$url" 2>/dev/null ;;
  *) "${browser[@]}" --dump-dom "$url" >"$out" 2>/dev/null ;;
esac
echo "wrote $out"
