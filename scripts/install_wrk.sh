#!/bin/sh
# Install wrk, the HTTP load generator scripts/load_test.py drives (Debian/Ubuntu package).
set -e
if command -v wrk >/dev/null 2>&1; then
    echo "wrk is already installed: $(command -v wrk)"
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update
$SUDO apt-get install -y wrk
