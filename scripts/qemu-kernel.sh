#!/usr/bin/env bash
# Unpacks Debian's cloud kernel (device-mapper, dm-crypt and dm-integrity as modules) into a cache for the QEMU
# tests of internal/diskmapper/luks, whose host kernel may lack device-mapper. Nothing is installed into the
# system: the package is downloaded and unpacked only. Quick when the cache already holds a kernel.
#
# Cache: ${CONSTELLATION_QEMU_CACHE:-/var/cache/constellation/qemu}/kernel -> <package>/, with vmlinuz and
# modules/ (the package's lib/modules/<version>).
set -euo pipefail
cache="${CONSTELLATION_QEMU_CACHE:-/var/cache/constellation/qemu}"
if [ -f "$cache/kernel/vmlinuz" ] && [ -d "$cache/kernel/modules" ]; then
  exit 0
fi
resolve() { apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '$1 == "Depends:" && $2 ~ /^linux-image-6\.1\./ {print $2; exit}'; }
pkg="$(resolve)"
if [ -z "$pkg" ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  pkg="$(resolve)"
fi
[ -n "$pkg" ] || { echo "qemu-kernel: no linux-image-6.1 cloud kernel package found (apt-cache depends linux-image-cloud-amd64)" >&2; exit 1; }
echo "qemu-kernel: unpacking $pkg into $cache"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null)
dpkg-deb -x "$tmp"/*.deb "$tmp/root"
version="${pkg#linux-image-}"
mkdir -p "$cache/$pkg.tmp"
mv "$tmp/root/boot/vmlinuz-$version" "$cache/$pkg.tmp/vmlinuz"
mv "$tmp/root/lib/modules/$version" "$cache/$pkg.tmp/modules"
rm -rf "$cache/$pkg"
mv "$cache/$pkg.tmp" "$cache/$pkg"
ln -sfn "$pkg" "$cache/kernel"
echo "qemu-kernel: $cache/kernel -> $pkg"
