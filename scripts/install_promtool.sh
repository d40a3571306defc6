#!/bin/sh
# Install promtool, Prometheus's rule checker (tests/test_alert_rules.py runs `promtool check rules` and
# `promtool test rules` on deploy/prometheus/alerts.yml), from Debian's `prometheus` package. Only the promtool
# binary is taken out of the package: no Prometheus server is installed, enabled or started.
set -e
if command -v promtool >/dev/null 2>&1; then
    echo "promtool is already installed: $(command -v promtool)"
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
if ! apt-get download prometheus >/dev/null 2>&1; then
    $SUDO apt-get update
    apt-get download prometheus
fi
dpkg-deb -x prometheus_*.deb extracted
$SUDO install -m 0755 extracted/usr/bin/promtool /usr/local/bin/promtool
echo "installed $(promtool --version 2>&1 | head -1) at /usr/local/bin/promtool"
