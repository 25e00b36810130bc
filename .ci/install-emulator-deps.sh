#!/usr/bin/env bash
# Debian packages the emulated aarch64 board (edgecompile/device/emulator.py) needs:
#   qemu-user-static  qemu-aarch64 and qemu-arm, registered in binfmt_misc by ensure_binfmt()
#                     (F flag); qemu-arm runs the armhf board without Python (rpi3-armv7)
#   mmdebstrap        builds the arm64 Debian rootfs (debootstrap is used only as a fallback),
#                     the Python-less arm64/armhf ones (device/native_rootfs.py), and the glibc
#                     sysroots of the native runner (native/sysroot.py)
#   arch-test         lets mmdebstrap confirm arm64/armhf binaries run through qemu first
# Installs only what is missing, so a second run costs no network. The rootfs itself is built
# (once, then cached in ${EDGECOMPILE_CACHE:-~/.cache/edgecompile}) by the tests on first use.
set -euo pipefail

packages=(qemu-user-static mmdebstrap arch-test)

missing=()
for package in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done

if ((${#missing[@]} == 0)); then
    echo "emulator deps: all present (${packages[*]})"
    exit 0
fi

if [[ $(id -u) -ne 0 ]]; then
    echo "emulator deps: missing ${missing[*]}; run this script as root" >&2
    exit 1
fi

echo "emulator deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q "${missing[@]}"
