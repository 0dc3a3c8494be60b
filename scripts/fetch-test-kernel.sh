#!/usr/bin/env bash
# Fetches a stock Linux kernel for the Linux-guest tests (crates/nexus-kvm/tests/linux_boot.rs):
# Debian's cloud kernel package, from which it keeps
#   vmlinuz  — the bzImage, as packaged;
#   vmlinux  — the ELF kernel, the bzImage's LZ4 payload unpacked (it carries the PVH note).
#
# Everything goes to a cache directory outside the repository (never commit a kernel):
#   ${NEXUS_KERNEL_CACHE:-$HOME/.cache/nexus/kernel}
# Idempotent: a cached vmlinux is reused. The last line printed is the vmlinux's path.
#
# Needs apt-get, apt-cache and dpkg-deb (Debian or Ubuntu); installs lz4 if missing.
set -euo pipefail

cache="${NEXUS_KERNEL_CACHE:-$HOME/.cache/nexus/kernel}"
vmlinux="$cache/vmlinux"
vmlinuz="$cache/vmlinuz"
meta="${NEXUS_KERNEL_PACKAGE:-linux-image-cloud-amd64}"

log() { echo "fetch-test-kernel: $*" >&2; }
die() { log "$*"; exit 1; }

is_elf() { [[ -s $1 && "$(head -c 4 "$1" | od -An -tx1 | tr -d ' \n')" == 7f454c46 ]]; }

if is_elf "$vmlinux" && [[ -s $vmlinuz ]]; then
    log "cached: $vmlinux"
    echo "$vmlinux"
    exit 0
fi

command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
    || die "apt-get and dpkg-deb are needed (a Debian or Ubuntu host)"
sudo=""
sandbox=()
if [[ $(id -u) -eq 0 ]]; then
    # apt's download sandbox user cannot write to a root-owned cache: download as root.
    sandbox=(-o APT::Sandbox::User=root)
else
    sudo="sudo"
fi
if ! command -v lz4 >/dev/null; then
    log "installing lz4"
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq lz4 >/dev/null
fi

# The meta-package depends on the current versioned kernel package.
versioned() {
    apt-cache depends "$meta" 2>/dev/null \
        | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}
pkg="$(versioned || true)"
if [[ -z $pkg ]]; then
    log "refreshing the package lists"
    $sudo apt-get update -qq
    pkg="$(versioned || true)"
fi
[[ -n $pkg ]] || die "no kernel package behind $meta (try: apt-cache search linux-image)"

mkdir -p "$cache"
work="$(mktemp -d "$cache/.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT
log "downloading $pkg"
download() { (cd "$work" && apt-get -q "${sandbox[@]}" download "$pkg" >&2); }
if ! download; then
    # A stale package list names a version the mirror no longer has.
    log "refreshing the package lists and retrying"
    $sudo apt-get update -qq
    pkg="$(versioned)"
    download
fi
deb="$(ls "$work"/*.deb)"
dpkg-deb -x "$deb" "$work/root"
image="$(ls "$work"/root/boot/vmlinuz-* | head -n 1)"
[[ -s $image ]] || die "$deb holds no /boot/vmlinuz-*"

# The payload's place is in the setup header: setup_sects at 0x1f1 (0 means 4),
# payload_offset at 0x248 (from the protected-mode kernel, which follows the setup sectors)
# and payload_length at 0x24c. Check for the LZ4 legacy-frame magic there, and fall back to
# searching for it.
u8_at() { od -An -tu1 -j "$1" -N 1 "$image" | tr -d ' '; }
u32_at() { od -An -tu4 -j "$1" -N 4 "$image" | tr -d ' '; }
magic_at() { od -An -tx1 -j "$1" -N 4 "$image" | tr -d ' \n'; }
lz4_magic=02214c18
sects="$(u8_at $((0x1f1)))"
[[ $sects -eq 0 ]] && sects=4
offset=$(( (sects + 1) * 512 + $(u32_at $((0x248))) ))
length="$(u32_at $((0x24c)))"
if [[ "$(magic_at "$offset")" != "$lz4_magic" ]]; then
    log "no LZ4 payload at the header's offset $offset; searching for the LZ4 magic"
    offset="$(grep -obUaP '\x02\x21\x4c\x18' "$image" | head -n 1 | cut -d: -f1)"
    [[ -n $offset ]] || die "$image has no LZ4 payload (magic 02 21 4c 18)"
    length=$(( $(stat -c %s "$image") - offset ))
fi
log "unpacking the LZ4 payload at offset $offset ($length bytes)"
# lz4 exits non-zero on the 4-byte size trailer the kernel build appends: check the result.
tail -c +"$((offset + 1))" "$image" | head -c "$length" | lz4 -dc > "$work/vmlinux" 2>/dev/null || true
is_elf "$work/vmlinux" || die "the unpacked payload of $image is not an ELF file"
# The section headers come last: a complete file holds them.
shoff="$(od -An -tu8 -j 40 -N 8 "$work/vmlinux" | tr -d ' ')"
shnum="$(od -An -tu2 -j 60 -N 2 "$work/vmlinux" | tr -d ' ')"
(( $(stat -c %s "$work/vmlinux") >= shoff + shnum * 64 )) \
    || die "the unpacked payload of $image is truncated"

cp "$image" "$vmlinuz.tmp" && mv "$vmlinuz.tmp" "$vmlinuz"
mv "$work/vmlinux" "$vmlinux"
echo "${pkg}" > "$cache/package"
log "$pkg: $(stat -c %s "$vmlinux") bytes of vmlinux, $(stat -c %s "$vmlinuz") bytes of vmlinuz"
echo "$vmlinux"
