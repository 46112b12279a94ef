#!/usr/bin/env bash
# Makes sure a Vulkan device exists for the wgpu tests: on a machine without a GPU driver,
# installs Mesa's software rasteriser (lavapipe, Debian/Ubuntu `mesa-vulkan-drivers`).
set -euo pipefail
for icd in /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json; do
    if [ -e "$icd" ]; then exit 0; fi
done
sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
echo "no Vulkan driver found: installing mesa-vulkan-drivers (lavapipe)"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq mesa-vulkan-drivers >/dev/null
