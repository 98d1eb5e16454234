#!/usr/bin/env bash
# A browser for kaleido's static figures (PNG/SVG/PDF): install Chromium when none is present and we
# can (root with apt-get); otherwise say in one line what to run. Figures are HTML either way.
for b in chromium chromium-browser google-chrome google-chrome-stable; do
  command -v "$b" >/dev/null 2>&1 && exit 0
done
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium for PNG figures (apt-get) ..."
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) && exit 0
fi
echo "note: no Chrome/Chromium, so figures are HTML only; for PNG run: sudo apt-get install chromium (Debian/Ubuntu)"
