#!/usr/bin/env bash
# Release packages of the agent and the reference hub (docs/OPERATIONS.md, "Packages").
#
#   scripts/package.sh [--targets LIST] [--no-install-deps]
#
# LIST is a comma-separated choice of (default: all three, built one after the other):
#   native  .deb for this machine's architecture (glibc; x86_64 here: amd64)
#   musl    x86_64-unknown-linux-musl: statically linked, runs on any x86_64 Linux
#           (old glibc, RPM-based 信创 systems); .deb and tarball
#   arm64   aarch64-unknown-linux-gnu (Kylin/UOS on Phytium, Kunpeng); .deb and tarball
#
# Every target gives target/package/<rust triple>/:
#   exchange-agent_<version>-1_<arch>.deb, exchange-hub_<version>-1_<arch>.deb
#   exchange-agent-<version>-<triple>.tar.gz, exchange-hub-<version>-<triple>.tar.gz
# (a tarball holds the files of the .deb and an install.sh for systems without dpkg).
#
# Missing tools are installed (unless --no-install-deps): cargo-deb (cargo install), the Rust
# targets (rustup), musl-tools (musl-gcc: ring and the bundled SQLite compile C) and
# gcc-aarch64-linux-gnu with libc6-dev-arm64-cross (the arm64 C compiler and linker), with apt.
# The cross settings are passed in the environment of these builds only, not in a
# .cargo/config.toml, so other builds of the workspace are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -t 2 ]; then
  log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
else
  log() { printf '==> %s\n' "$*" >&2; }
fi
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }

TARGETS="native,musl,arm64"
INSTALL_DEPS=1
while [ $# -gt 0 ]; do
  case "$1" in
    --targets) [ $# -ge 2 ] || die "--targets needs a list"; TARGETS=$2; shift 2 ;;
    --targets=*) TARGETS=${1#--targets=}; shift ;;
    --no-install-deps) INSTALL_DEPS=""; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then SUDO="sudo"; fi

APT_UPDATED=""
apt_install() {
  [ -n "$INSTALL_DEPS" ] || die "missing: $* (rerun without --no-install-deps, or install them)"
  command -v apt-get >/dev/null || die "missing: $* (no apt-get here: install them by hand)"
  if [ -z "$APT_UPDATED" ]; then
    log "apt-get update"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
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

VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
[ -n "$VERSION" ] || die "no workspace version in Cargo.toml"
HOST=$(rustc -vV | sed -n 's/^host: //p')
OUT=target/package
mkdir -p "$OUT"

# A tarball per package: the .deb's files under one directory, with install.sh (made from
# scripts/tarball-install.sh) doing what the maintainer scripts do.
make_tarball() {
  local deb=$1 name=$2 triple=$3 dir
  dir="$name-$VERSION-$triple"
  rm -rf "$OUT/$triple/$dir"
  dpkg-deb -x "$deb" "$OUT/$triple/$dir"
  sed "s/@NAME@/$name/g" scripts/tarball-install.sh > "$OUT/$triple/$dir/install.sh"
  chmod 755 "$OUT/$triple/$dir/install.sh"
  tar -C "$OUT/$triple" --owner=0 --group=0 -czf "$OUT/$triple/$dir.tar.gz" "$dir"
  rm -rf "${OUT:?}/$triple/$dir"
}

# build_target TRIPLE: one cargo build of both binaries, then one .deb per package from it
# (--no-build), then the tarballs. TARGET_ENV holds the target's settings (NAME=value).
TARGET_ENV=()
with_env() { env ${TARGET_ENV[@]+"${TARGET_ENV[@]}"} "$@"; }
build_target() {
  local triple=$1 target_args=() name deb
  if [ "$triple" != "$HOST" ]; then target_args=(--target "$triple"); fi
  log "cargo build --release ${target_args[*]} (exchange-agent, exchange-hub)"
  with_env cargo build --release --locked ${target_args[@]+"${target_args[@]}"} -p exchange-agent -p exchange-hub
  mkdir -p "$OUT/$triple"
  rm -f "$OUT/$triple"/*.deb "$OUT/$triple"/*.tar.gz
  for name in exchange-agent exchange-hub; do
    log "cargo deb -p $name ${target_args[*]}"
    with_env cargo deb --no-build --locked -p "$name" ${target_args[@]+"${target_args[@]}"} --output "$OUT/$triple/"
    deb=$(ls "$OUT/$triple/${name}_${VERSION}"-*.deb)
    make_tarball "$deb" "$name" "$triple"
  done
}

IFS=, read -r -a WANT <<< "$TARGETS"
for t in "${WANT[@]}"; do
  case "$t" in native|musl|arm64) ;; *) die "unknown target '$t' (native, musl, arm64)" ;; esac
done

for t in "${WANT[@]}"; do
  case "$t" in
    native)
      TARGET_ENV=()
      build_target "$HOST"
      ;;
    musl)
      triple=x86_64-unknown-linux-musl
      need_rust_target "$triple"
      command -v musl-gcc >/dev/null || apt_install musl-tools
      # ring and the bundled SQLite are C: compiled by musl-gcc against musl's headers. The
      # musl target links statically (crt-static) with Rust's own musl.
      TARGET_ENV=(CC_x86_64_unknown_linux_musl=musl-gcc)
      build_target "$triple"
      ;;
    arm64)
      triple=aarch64-unknown-linux-gnu
      if [ "$HOST" = "$triple" ]; then build_target "$triple"; continue; fi
      need_rust_target "$triple"
      if ! command -v aarch64-linux-gnu-gcc >/dev/null || [ ! -e /usr/aarch64-linux-gnu/lib/libc.so ]; then
        apt_install gcc-aarch64-linux-gnu libc6-dev-arm64-cross
      fi
      # cargo-deb strips with the target's strip (STRIP_<triple>) and reads the target's
      # shared libraries for $auto from the cross sysroot.
      TARGET_ENV=(
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
        CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
        AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
        "STRIP_$triple=aarch64-linux-gnu-strip"
        "OBJCOPY_$triple=aarch64-linux-gnu-objcopy"
      )
      build_target "$triple"
      ;;
  esac
done

log "packages:"
for t in "${WANT[@]}"; do
  case "$t" in native) triple=$HOST ;; musl) triple=x86_64-unknown-linux-musl ;; arm64) triple=aarch64-unknown-linux-gnu ;; esac
  ls -l "$OUT/$triple"/*.deb "$OUT/$triple"/*.tar.gz >&2
done
