#!/usr/bin/env bash
# Fetch one Debian kernel (image, modules, headers, kbuild) unpacked into a cache,
# never installed: the guests boot it with virtme-ng and bcc inside them
# compiles against its headers.
#
#   scripts/vm/fetch-kernel.sh SERIES      SERIES: 6.1 (bookworm) or 6.12 (bookworm-backports)
#
# Prints the cache directory of the unpacked tree on stdout (the kernel release is in
# its file `release`). A tree already unpacked is reused without touching the network;
# FORKTRACE_VM_REFRESH=1 fetches the suite's newest kernel again.
#
# apt runs with a private configuration (its own sources list, package lists and
# archive cache under the cache directory): the host's apt sources, lists and
# preferences are not read or written, and nothing is installed.
#
# Environment:
#   FORKTRACE_KERNEL_CACHE   cache root (default ~/.cache/forktrace/kernels)
#   FORKTRACE_DEBIAN_MIRROR  Debian archive URL (default: the one in the host's apt sources)
set -euo pipefail

die() { echo "fetch-kernel: $*" >&2; exit 1; }

series=${1:-}
case "$series" in
    6.1)  suite=bookworm ;;
    6.12) suite=bookworm-backports ;;
    *) die "usage: fetch-kernel.sh 6.1|6.12 (got '${series}')" ;;
esac

cache_root=${FORKTRACE_KERNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/forktrace/kernels}
tree=$cache_root/$series

# Point lib/modules/RELEASE/{build,source} at the unpacked header trees. The packaged
# links are absolute paths of an installed system (6.1 has no build link at all).
# Absolute paths into the cache: the guest sees the host's file system at the same paths.
fix_header_links() {
    local release common flavour_dir moddir
    release=$(cat "$tree/release")
    moddir=$tree/root/lib/modules/$release
    flavour_dir=$tree/root/usr/src/linux-headers-$release
    common=$(cat "$tree/headers-common")
    [ -d "$moddir" ] || die "$moddir missing: the unpacked image is incomplete (rm -r $tree and retry)"
    [ -d "$flavour_dir" ] || die "$flavour_dir missing: the unpacked headers are incomplete (rm -r $tree and retry)"
    [ -d "$tree/root/usr/src/$common" ] || die "$tree/root/usr/src/$common missing (rm -r $tree and retry)"
    ln -sfn "$flavour_dir" "$moddir/build"
    ln -sfn "$tree/root/usr/src/$common" "$moddir/source"
    # The package's postinst would run depmod; virtme-ng needs modules.dep to put the
    # 9p and overlay modules into its initramfs.
    if [ ! -s "$moddir/modules.dep" ]; then
        command -v depmod >/dev/null || die "depmod not found (apt-get install kmod)"
        depmod -b "$tree/root" "$release"
    fi
}

if [ -s "$tree/release" ] && [ "${FORKTRACE_VM_REFRESH:-0}" != 1 ]; then
    fix_header_links
    echo "$tree"
    exit 0
fi

command -v apt-get >/dev/null || die "apt-get not found: fetching Debian kernels needs a Debian-like host"
command -v dpkg >/dev/null || die "dpkg not found"

mirror=${FORKTRACE_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
    # The host's own Debian archive (deb822 .sources or one-line .list), security archive excluded.
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null |
        grep -Eo 'https?://[^ ]+/debian/?( |$)' | grep -v security | head -n1 | tr -d ' ' || true)
fi
[ -n "$mirror" ] || die "no Debian archive in the host's apt sources: set FORKTRACE_DEBIAN_MIRROR to one"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
[ -r "$keyring" ] || die "$keyring missing: apt-get install debian-archive-keyring"

apt_dir=$cache_root/.apt/$suite
mkdir -p "$apt_dir/sources.list.d" "$apt_dir/preferences.d" "$apt_dir/lists/partial" \
    "$apt_dir/archives/partial"
echo "deb [signed-by=$keyring] $mirror $suite main" >"$apt_dir/sources.list"
: >"$apt_dir/status"  # an empty dpkg status: the host's installed versions must not pick the candidates
apt_opts=(
    -o "Dir::Etc::SourceList=$apt_dir/sources.list"
    -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
    -o "Dir::Etc::Preferences=$apt_dir/preferences"
    -o "Dir::Etc::PreferencesParts=$apt_dir/preferences.d"
    -o "Dir::State::Lists=$apt_dir/lists"
    -o "Dir::State::status=$apt_dir/status"
    -o "Dir::Cache=$apt_dir"
    -o "Dir::Cache::archives=$apt_dir/archives"
    -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
    -o "APT::Architectures=amd64" -o "Acquire::Languages=none"
    -o "APT::Sandbox::User=root"
    -o "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled=false"
)
[ "$(dpkg --print-architecture)" = amd64 ] || die "only amd64 hosts are supported (got $(dpkg --print-architecture))"

echo "fetch-kernel: $series: package lists of $suite from $mirror" >&2
apt-get "${apt_opts[@]}" -qq --error-on=any update >&2 || die "apt-get update of $suite failed (no network to the Debian archive?)"

# The flavour's metapackage names this suite's current kernel ABI.
depends_of() {
    apt-cache "${apt_opts[@]}" show --no-all-versions "$1" 2>/dev/null | sed -n 's/^Depends: //p' | head -n1 |
        tr ',' '\n' | sed 's/^ *//; s/ .*//'
}
image=$(depends_of linux-image-amd64 | grep -E '^linux-image-[0-9]' | head -n1 || true)
[ -n "$image" ] || die "linux-image-amd64 in $suite names no kernel image (is $suite in the archive at $mirror?)"
release=${image#linux-image-}
headers=linux-headers-$release
common=$(depends_of "$headers" | grep -E '^linux-headers-.*-common$' | head -n1 || true)
kbuild=$(depends_of "$headers" | grep -E '^linux-kbuild-' | head -n1 || true)
[ -n "$common" ] && [ -n "$kbuild" ] || die "$headers in $suite does not name its -common and kbuild packages"

packages=("$image" "$headers" "$common" "$kbuild")
echo "fetch-kernel: $series: apt-get download ${packages[*]}" >&2
work=$(mktemp -d "$cache_root/.download.XXXXXX")
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get "${apt_opts[@]}" -qq download "${packages[@]}") >&2 ||
    die "apt-get download of ${packages[*]} from $suite failed"

# Unpack beside the old tree, then swap: an interrupted run never leaves a half tree
# that looks complete (the `release` file is written last).
rm -rf "$work/tree"
mkdir -p "$work/tree/root"
for deb in "$work"/*.deb; do
    dpkg -x "$deb" "$work/tree/root"
done
printf '%s\n' "${packages[@]}" >"$work/tree/packages"
echo "$common" >"$work/tree/headers-common"
echo "$release" >"$work/tree/release"
rm -rf "$tree"
mv "$work/tree" "$tree"
fix_header_links
echo "fetch-kernel: $series: $release unpacked in $tree ($(du -sh "$tree" | cut -f1))" >&2
echo "$tree"
