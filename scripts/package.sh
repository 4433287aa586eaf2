#!/usr/bin/env bash
# Release packages of the agent and the reference hub (docs/OPERATIONS.md, "Packages").
#
#   scripts/package.sh [--targets LIST] [--glibc VERSION] [--no-install-deps]
#
# LIST is a comma-separated choice of (default: all three, built one after the other):
#   native  this machine's architecture (amd64 here), linked against its glibc
#   musl    x86_64-unknown-linux-musl: statically linked, runs on any x86_64 Linux
#   arm64   aarch64-unknown-linux-gnu (Kylin, UOS on Phytium, Kunpeng), linked against the
#           glibc of the cross toolchain (Debian's libc6-dev-arm64-cross)
# A binary linked against a glibc needs that version or a newer one where it runs (Debian 12
# gives glibc >= 2.34; Kylin V10 and UOS 20 have 2.28). --glibc 2.17 builds native and arm64
# against glibc 2.17 instead, with cargo-zigbuild and Zig (installed from PyPI into
# target/zig-venv): these run on any glibc from 2.17 on. (Both arm64 builds use
# target/aarch64-unknown-linux-gnu: one after the other rebuilds most crates.)
#
# Each target gives target/package/<rust triple>[-glibc<VERSION>]/:
#   exchange-agent_<version>-1_<arch>.deb, exchange-hub_<version>-1_<arch>.deb
#   exchange-agent-<version>-<triple>.tar.gz, exchange-hub-<version>-<triple>.tar.gz
# A tarball holds the .deb's files and an install.sh (scripts/tarball-install.sh) for systems
# without dpkg.
#
# Missing tools are installed (unless --no-install-deps): cargo-deb (cargo install), the Rust
# targets (rustup), musl-tools (musl-gcc: ring and the bundled SQLite compile C),
# gcc-aarch64-linux-gnu and libc6-dev-arm64-cross (the arm64 C compiler, linker and strip),
# with apt. The cross settings are passed in the environment of these builds only, not in a
# .cargo/config.toml, so other builds of the workspace are unchanged.
set -euo pipefail
# One block, read whole before it runs: editing this file during a build does not disturb it.
{
cd "$(dirname "$0")/.."

# log, die, apt_get_install
. scripts/lib.sh
usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; }

TARGETS="native,musl,arm64"
GLIBC=""
INSTALL_DEPS=1
while [ $# -gt 0 ]; do
  case "$1" in
    --targets) [ $# -ge 2 ] || die "--targets needs a list"; TARGETS=$2; shift 2 ;;
    --targets=*) TARGETS=${1#--targets=}; shift ;;
    --glibc) [ $# -ge 2 ] || die "--glibc needs a version"; GLIBC=$2; shift 2 ;;
    --glibc=*) GLIBC=${1#--glibc=}; shift ;;
    --no-install-deps) INSTALL_DEPS=""; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
[ -z "$GLIBC" ] || [[ "$GLIBC" =~ ^2\.[0-9]+$ ]] || die "--glibc wants a version like 2.17"

IFS=, read -r -a WANT <<< "$TARGETS"
for t in "${WANT[@]}"; do
  case "$t" in native|musl|arm64) ;; *) die "unknown target '$t' (native, musl, arm64)" ;; esac
done

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

apt_install() {
  [ -n "$INSTALL_DEPS" ] || die "missing: $* (install them, or rerun without --no-install-deps)"
  command -v apt-get >/dev/null || die "missing: $* (no apt-get here: install them by hand)"
  apt_get_install "$@"
}

need_rust_target() {
  if ! rustup target list --installed | grep -qx "$1"; then
    [ -n "$INSTALL_DEPS" ] || die "missing Rust target $1 (rustup target add $1)"
    log "rustup target add $1"
    rustup target add "$1"
  fi
}

if ! cargo deb --version >/dev/null 2>&1; then
  [ -n "$INSTALL_DEPS" ] || die "missing cargo-deb (cargo install cargo-deb --locked)"
  log "cargo install cargo-deb --locked"
  cargo install cargo-deb --locked
fi
command -v dpkg-deb >/dev/null || die "dpkg-deb is needed (a Debian-like build machine)"

if [ -n "$GLIBC" ]; then
  # Zig links against a glibc of the chosen version; cargo-zigbuild drives it. Both come as
  # wheels from PyPI, into a virtual environment of this workspace.
  ZIG_VENV=target/zig-venv
  if [ ! -x "$ZIG_VENV/bin/cargo-zigbuild" ] || ! "$ZIG_VENV/bin/python3" -m ziglang version >/dev/null 2>&1; then
    [ -n "$INSTALL_DEPS" ] || die "missing cargo-zigbuild and ziglang (pip install ziglang cargo-zigbuild)"
    python3 -m venv --help >/dev/null 2>&1 || apt_install python3-venv
    log "pip install ziglang cargo-zigbuild (into $ZIG_VENV)"
    python3 -m venv "$ZIG_VENV" || { apt_install python3-venv; python3 -m venv "$ZIG_VENV"; }
    "$ZIG_VENV/bin/pip" install -q ziglang cargo-zigbuild
  fi
  PATH="$PWD/$ZIG_VENV/bin:$PATH"
fi

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
[ -n "$VERSION" ] || die "no workspace version in Cargo.toml"
HOST=$(rustc -vV | sed -n 's/^host: //p')
OUT=target/package
mkdir -p "$OUT"

# A tarball per package: the .deb's files under one directory, and install.sh doing what the
# maintainer scripts do.
make_tarball() {
  local deb=$1 name=$2 dir=$3 triple=$4 base
  base="$name-$VERSION-$triple"
  rm -rf "${dir:?}/$base"
  dpkg-deb -x "$deb" "$dir/$base"
  sed "s/@NAME@/$name/g" scripts/tarball-install.sh > "$dir/$base/install.sh"
  chmod 755 "$dir/$base/install.sh"
  tar -C "$dir" --owner=0 --group=0 -czf "$dir/$base.tar.gz" "$base"
  rm -rf "${dir:?}/$base"
}

# fix_libc_depends DEB NAME TRIPLE: the libc6 dependency as the binary needs it. dpkg-shlibdeps
# (cargo-deb's $auto) reads the build machine's libc: for a cross build that is the cross
# toolchain's package, giving `libc6:arm64 (>= <its version>)`, and for a binary linked against
# an older glibc (--glibc) a version higher than needed. The binary's newest GLIBC_ symbol
# version is the one it needs.
fix_libc_depends() {
  local deb=$1 name=$2 triple=$3 objdump=objdump need old tmp
  [ "$triple" = "$HOST" ] || objdump="${triple%%-unknown-*}-linux-gnu-objdump"
  command -v "$objdump" >/dev/null || die "$objdump is needed to read the glibc version"
  tmp=$(mktemp -d)
  dpkg-deb -R "$deb" "$tmp/x"
  need=$("$objdump" -T "$tmp/x/usr/bin/$name" | grep -o 'GLIBC_2\.[0-9]*' | sed 's/GLIBC_//' | sort -uV | tail -n1)
  [ -n "$need" ] || die "no GLIBC_ symbol version in $name"
  old=$(sed -n 's/^Depends: //p' "$tmp/x/DEBIAN/control")
  sed -i -E "s/^(Depends: .*)libc6(:[a-z0-9]+)? \(>= [0-9.]+\)/\1libc6 (>= $need)/" "$tmp/x/DEBIAN/control"
  if [ "$old" != "$(sed -n 's/^Depends: //p' "$tmp/x/DEBIAN/control")" ]; then
    log "$name: Depends: $old -> $(sed -n 's/^Depends: //p' "$tmp/x/DEBIAN/control")"
    dpkg-deb --root-owner-group -Zxz -b "$tmp/x" "$deb" >/dev/null
  fi
  rm -rf "$tmp"
}

# build_target TRIPLE: one cargo build of both binaries (cargo zigbuild with --glibc), then
# one .deb per package from it (--no-build) and the tarballs. TARGET_ENV holds the target's
# settings (NAME=value), passed to these commands only.
TARGET_ENV=()
with_env() { env ${TARGET_ENV[@]+"${TARGET_ENV[@]}"} "$@"; }
build_target() {
  local triple=$1 pinned=${2:-} target_args=() dir name deb
  dir="$OUT/$triple"
  if [ -n "$pinned" ]; then
    dir="$OUT/$triple-glibc$GLIBC"
    log "cargo zigbuild --release --target $triple.$GLIBC (exchange-agent, exchange-hub)"
    with_env cargo zigbuild --release --locked --target "$triple.$GLIBC" -p exchange-agent -p exchange-hub
    target_args=(--target "$triple")
  else
    if [ "$triple" != "$HOST" ]; then target_args=(--target "$triple"); fi
    log "cargo build --release ${target_args[*]} (exchange-agent, exchange-hub)"
    with_env cargo build --release --locked ${target_args[@]+"${target_args[@]}"} -p exchange-agent -p exchange-hub
  fi
  mkdir -p "$dir"
  rm -f "$dir"/*.deb "$dir"/*.tar.gz
  for name in exchange-agent exchange-hub; do
    log "cargo deb -p $name ${target_args[*]}"
    with_env cargo deb --no-build --locked -p "$name" ${target_args[@]+"${target_args[@]}"} --output "$dir/"
    deb=$(ls "$dir/${name}_${VERSION}"-*.deb)
    case "$triple" in *-gnu) fix_libc_depends "$deb" "$name" "$triple" ;; esac
    make_tarball "$deb" "$name" "$dir" "$triple"
  done
  BUILT+=("$dir")
}

ARM64_ENV=(
  "STRIP_aarch64-unknown-linux-gnu=aarch64-linux-gnu-strip"     # cargo-deb strips with these
  "OBJCOPY_aarch64-unknown-linux-gnu=aarch64-linux-gnu-objcopy"
)
BUILT=()
for t in "${WANT[@]}"; do
  case "$t" in
    native)
      TARGET_ENV=()
      if [ -n "$GLIBC" ]; then
        need_rust_target "$HOST"
        build_target "$HOST" pinned
      else
        build_target "$HOST"
      fi
      ;;
    musl)
      triple=x86_64-unknown-linux-musl
      need_rust_target "$triple"
      command -v musl-gcc >/dev/null || apt_install musl-tools
      # ring and the bundled SQLite are C, compiled by musl-gcc against musl's headers; the
      # musl target links everything statically.
      TARGET_ENV=(CC_x86_64_unknown_linux_musl=musl-gcc)
      build_target "$triple"
      ;;
    arm64)
      triple=aarch64-unknown-linux-gnu
      if [ "$HOST" = "$triple" ] && [ -z "$GLIBC" ]; then TARGET_ENV=(); build_target "$triple"; continue; fi
      need_rust_target "$triple"
      if [ -n "$GLIBC" ]; then
        command -v aarch64-linux-gnu-strip >/dev/null || apt_install binutils-aarch64-linux-gnu
        TARGET_ENV=("${ARM64_ENV[@]}")
        build_target "$triple" pinned
      else
        if ! command -v aarch64-linux-gnu-gcc >/dev/null || [ ! -e /usr/aarch64-linux-gnu/lib/libc.so ]; then
          apt_install gcc-aarch64-linux-gnu libc6-dev-arm64-cross
        fi
        TARGET_ENV=(
          CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
          CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
          AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
          "${ARM64_ENV[@]}"
        )
        build_target "$triple"
      fi
      ;;
  esac
done

log "packages:"
for dir in "${BUILT[@]}"; do
  ls -l "$dir"/*.deb "$dir"/*.tar.gz >&2
done
exit 0
}
