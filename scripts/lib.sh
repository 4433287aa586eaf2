# Shell helpers of scripts/test.sh and scripts/package.sh, sourced (not run) from the
# workspace root: `. scripts/lib.sh`.
#
#   log MESSAGE...        a step, on standard error (bold when standard error is a terminal)
#   die MESSAGE...        `error: MESSAGE` on standard error, exit 1
#   apt_get_install PKG…  apt-get update (once per run), then apt-get install -y, quietly, as
#                         root through $SUDO (empty when already root); the caller checks first
#                         that it may and can install

if [ -t 2 ]; then
  log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
else
  log() { printf '==> %s\n' "$*" >&2; }
fi
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

APT_UPDATED=""
apt_get_install() {
  if [ -z "$APT_UPDATED" ]; then
    log "apt-get update"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
}
