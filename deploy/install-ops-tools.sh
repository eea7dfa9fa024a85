#!/usr/bin/env bash
# Installs the Prometheus and Alertmanager binaries the tests and the rule checks run
# (promtool, prometheus, amtool, prometheus-alertmanager) from Debian's packages, when missing.
# The packages' own services are not started: the tests start their own on free ports.
set -euo pipefail

tools=(promtool prometheus amtool prometheus-alertmanager)
missing=()
for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "ops-tools: missing ${missing[*]}: installing Debian's prometheus and prometheus-alertmanager"
command -v apt-get >/dev/null || { echo "error: apt-get not found: install ${missing[*]} by hand"; exit 2; }
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "error: installing ${missing[*]} needs root (or sudo)"; exit 2; }
    sudo="sudo"
fi

# Without a policy-rc.d, a postinst would start the packaged daemons on :9090/:9093 (or fail
# to, where no init system runs): deny service starts for the length of this install only.
policy=/usr/sbin/policy-rc.d
made_policy=""
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    made_policy=1
fi
cleanup() { [ -z "$made_policy" ] || $sudo rm -f "$policy"; }
trap cleanup EXIT

$sudo apt-get update -qq
# A postinst that still cannot start its service leaves the package unconfigured, not absent:
# the binaries are there, which is all that is needed; the check below is the verdict.
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    prometheus prometheus-alertmanager || $sudo dpkg --configure -a || true

for tool in "${tools[@]}"; do
    command -v "$tool" >/dev/null || { echo "error: $tool still missing after apt-get install"; exit 2; }
done
echo "ops-tools: $(promtool --version 2>&1 | head -n1); $(amtool --version 2>&1 | head -n1)"
