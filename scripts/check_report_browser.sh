#!/bin/sh
# Render OUT/report.html in headless Chromium (Debian package `chromium`) to OUT/report_screenshot.png (the whole
# page) and OUT/report_first_screen.png (what a 1280x800 window shows first: the "At a glance" section), so a person
# can see that the page shows its images, verdicts and tables. Nothing is fetched: the report is one
# self-contained file and Chromium's background networking is off.
#   sh scripts/check_report_browser.sh OUT [WIDTH,HEIGHT]
set -eu
if [ "$#" -lt 1 ]; then
  echo "usage: $0 OUT [WIDTH,HEIGHT]  (OUT holds report.html, from expand.py or scripts/report.py)" >&2
  exit 2
fi
OUT=$(cd "$1" && pwd)
SIZE=${2:-1280,4000}
FIRST_SCREEN=1280,800  # a laptop browser window: what the reader takes in before scrolling
if [ ! -f "$OUT/report.html" ]; then
  echo "$0: $OUT/report.html does not exist; run python scripts/report.py $1 first" >&2
  exit 1
fi
if ! command -v chromium >/dev/null 2>&1; then
  echo "$0: chromium not found; install it with: apt-get update && apt-get install -y chromium" >&2
  exit 1
fi
PROFILE=$(mktemp -d)
trap 'rm -rf "$PROFILE"' EXIT
shoot() {  # shoot PNG WIDTH,HEIGHT
  chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
    --disable-sync --no-first-run --user-data-dir="$PROFILE" --hide-scrollbars \
    --screenshot="$1" --window-size="$2" "file://$OUT/report.html" 2>"$PROFILE/chromium.log" \
    || { cat "$PROFILE/chromium.log" >&2; exit 1; }
  test -s "$1"
  echo "wrote $1"
}
shoot "$OUT/report_screenshot.png" "$SIZE"
shoot "$OUT/report_first_screen.png" "$FIRST_SCREEN"
