#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build, test and run this project. Idempotent and quick when
# everything is present.
set -euo pipefail

packages=(
  swtpm swtpm-tools   # software TPMs for tests, benchmarks and local clusters
  tpm2-tools          # an independent TPM client for cross-checks
  libssl-dev gcc      # cgo build of the reference TPM simulator
  libc6-dev libseccomp-dev pkg-config  # static pause and runc
  python3-pykmip      # a real KMIP server for key-management tests
  squashfs-tools      # the node image
  busybox-static iptables conntrack  # userland of the node image
  e2fsprogs           # mkfs.ext4: encrypted state disks (node image and tests)
  libcryptsetup-dev   # cgo build of internal/diskmapper/luks (LUKS2 state disks)
  cryptsetup-bin      # cryptsetup: cross-checks of the LUKS2 header parser
  qemu-system-x86     # qemu-system-x86_64: LUKS2 state disk tests under a kernel with device-mapper
  cpio                # cross-check of the initramfs the LUKS2 QEMU test writes
  binutils mtools     # objcopy and mformat/mcopy: the UKI and the ESP of the UEFI disk image
  systemd-boot-efi    # systemd-stub, the UKI's EFI stub
  ovmf                # UEFI firmware for the boot test of the UEFI disk image
  sbsigntool          # sbsign: cross-check of the Authenticode digest
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's cloud kernel, unpacked into a cache (not installed): the QEMU tests of LUKS2 state disks boot it.
bash "$(dirname "$0")/qemu-kernel.sh"

GOBIN="$(go env GOPATH)/bin"
if ! [ -x "$GOBIN/staticcheck" ]; then
  echo "setup: installing staticcheck"
  go install honnef.co/go/tools/cmd/staticcheck@v0.8.2
fi
echo "setup: ok"
