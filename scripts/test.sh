#!/usr/bin/env bash
# The whole test suite, on a fresh machine too (Debian/Ubuntu):
#   1. PostgreSQL and MariaDB are started if they are not running, and installed with apt
#      if they are missing (needs root or sudo); likewise openssl and systemd (systemd-analyze);
#   2. cargo test --workspace.
# The tests read EXCHANGE_TEST_PG_URL and EXCHANGE_TEST_MYSQL_URL; when unset, this script
# finds or prepares a working login and exports them. A database the tests need that cannot
# be made to work fails the run; nothing is skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

# log, die, apt_get_install
. scripts/lib.sh

command -v cargo >/dev/null || die "cargo not found: install Rust from https://rustup.rs (1.88 or later), then rerun"

# Root, or sudo, is needed only to install, start or set up a database; with both servers
# reachable and EXCHANGE_TEST_*_URL given (or their default logins working), none is.
no_privileges() { die "not root and no sudo: cannot run \`$*\`; run this as root, install sudo, or start and set up the databases yourself (see the header of scripts/test.sh)"; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; else SUDO="no_privileges"; fi
fi

apt_install() {
  command -v apt-get >/dev/null || die "$* missing and apt-get is not available; install it and rerun"
  apt_get_install "$@"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 what=$2
  for _ in $(seq 1 60); do
    port_open "$port" && return 0
    sleep 1
  done
  die "$what did not start listening on 127.0.0.1:$port within 60 s"
}

# ---------------------------------------------------------------- PostgreSQL
as_postgres() { if [ -z "$SUDO" ]; then runuser -u postgres -- "$@"; else $SUDO -u postgres "$@"; fi; }
pg_version() { ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1; }

ensure_postgres() {
  if ! port_open 5432; then
    if [ -z "$(pg_version)" ] || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
      apt_install postgresql postgresql-client
    fi
    local v; v=$(pg_version)
    [ -n "$v" ] || die "PostgreSQL is installed but has no cluster in /etc/postgresql"
    log "starting PostgreSQL $v"
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$v" main start 2>/dev/null || $SUDO pg_ctlcluster "$v" main start
    wait_port 5432 PostgreSQL
  fi
  command -v psql >/dev/null || apt_install postgresql-client
  if [ -z "${EXCHANGE_TEST_PG_URL:-}" ]; then
    if psql "postgres://postgres@127.0.0.1:5432/postgres" -qtAc 'select 1' >/dev/null 2>&1; then
      export EXCHANGE_TEST_PG_URL="postgres://postgres@127.0.0.1:5432/test"
    else
      # A fresh Debian cluster: password login over TCP for a test superuser.
      log "creating the PostgreSQL test login exchange_test"
      as_postgres psql -qc "DO \$\$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname='exchange_test') THEN CREATE ROLE exchange_test LOGIN SUPERUSER PASSWORD 'exchange_test'; END IF; END\$\$;" >/dev/null
      export EXCHANGE_TEST_PG_URL="postgres://exchange_test:exchange_test@127.0.0.1:5432/test"
    fi
  fi
  local admin="${EXCHANGE_TEST_PG_URL%/*}/postgres"
  psql "$admin" -qtAc 'select 1' >/dev/null || die "cannot log in to PostgreSQL with $EXCHANGE_TEST_PG_URL"
  local db="${EXCHANGE_TEST_PG_URL##*/}"; db="${db%%\?*}"
  if [ "$(psql "$admin" -qtAc "select 1 from pg_database where datname='$db'")" != "1" ]; then
    psql "$admin" -qc "create database \"$db\"" >/dev/null
  fi
  # The connector tests hold a prepared (two-phase) transaction open, which needs
  # max_prepared_transactions > 0; the setting takes effect on a restart.
  if [ "$(psql "$admin" -qtAc 'show max_prepared_transactions')" = "0" ]; then
    local v; v=$(pg_version)
    [ -n "$v" ] && port_open 5432 && [ "${EXCHANGE_TEST_PG_URL#*127.0.0.1:5432}" != "$EXCHANGE_TEST_PG_URL" ] \
      || die "PostgreSQL at $EXCHANGE_TEST_PG_URL has max_prepared_transactions = 0; set it to 10 or more and restart it"
    log "enabling prepared transactions (max_prepared_transactions = 10) and restarting PostgreSQL $v"
    psql "$admin" -qc "ALTER SYSTEM SET max_prepared_transactions = 10" >/dev/null
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$v" main restart 2>/dev/null || $SUDO pg_ctlcluster "$v" main restart
    wait_port 5432 PostgreSQL
    for _ in $(seq 1 30); do psql "$admin" -qtAc 'select 1' >/dev/null 2>&1 && break; sleep 1; done
    [ "$(psql "$admin" -qtAc 'show max_prepared_transactions')" != "0" ] \
      || die "max_prepared_transactions is still 0 after the restart"
  fi
  log "PostgreSQL ready (EXCHANGE_TEST_PG_URL set)"
}

# ---------------------------------------------------------------- MariaDB
ensure_mariadb() {
  if ! port_open 3306; then
    if ! command -v mariadbd >/dev/null && [ ! -x /usr/sbin/mariadbd ] && [ ! -x /usr/sbin/mysqld ]; then
      apt_install mariadb-server mariadb-client
    fi
    log "starting MariaDB"
    $SUDO mkdir -p /run/mysqld && $SUDO chown mysql:mysql /run/mysqld 2>/dev/null || true
    if ! { $SUDO service mariadb start >/dev/null 2>&1 && wait_port 3306 MariaDB; }; then
      local bin=/usr/sbin/mariadbd; [ -x "$bin" ] || bin=/usr/sbin/mysqld
      $SUDO start-stop-daemon --start --oknodo --background --exec "$bin" -- --user=mysql
      wait_port 3306 MariaDB
    fi
  fi
  local client; client=$(command -v mariadb || command -v mysql || true)
  [ -n "$client" ] || { apt_install mariadb-client; client=$(command -v mariadb); }
  if [ -z "${EXCHANGE_TEST_MYSQL_URL:-}" ]; then
    if "$client" -h 127.0.0.1 -P 3306 -u root -e 'select 1' >/dev/null 2>&1; then
      export EXCHANGE_TEST_MYSQL_URL="mysql://root@127.0.0.1:3306/test"
    else
      # A fresh Debian MariaDB: root logs in through the unix socket only.
      log "creating the MariaDB test login exchange_test"
      $SUDO "$client" -u root -e "CREATE USER IF NOT EXISTS 'exchange_test'@'127.0.0.1' IDENTIFIED BY 'exchange_test'; GRANT ALL PRIVILEGES ON *.* TO 'exchange_test'@'127.0.0.1' WITH GRANT OPTION; CREATE USER IF NOT EXISTS 'exchange_test'@'localhost' IDENTIFIED BY 'exchange_test'; GRANT ALL PRIVILEGES ON *.* TO 'exchange_test'@'localhost' WITH GRANT OPTION;"
      export EXCHANGE_TEST_MYSQL_URL="mysql://exchange_test:exchange_test@127.0.0.1:3306/test"
    fi
  fi
  local rest="${EXCHANGE_TEST_MYSQL_URL#mysql://}"
  local cred="${rest%%@*}" hostdb="${rest#*@}"
  local user="${cred%%:*}" pass=""; [ "$cred" != "$user" ] && pass="${cred#*:}"
  local db="${hostdb##*/}"; db="${db%%\?*}"
  MYSQL_PWD="$pass" "$client" -h 127.0.0.1 -P 3306 -u "$user" -e "CREATE DATABASE IF NOT EXISTS \`$db\`" \
    || die "cannot log in to MariaDB as $user at 127.0.0.1:3306"
  log "MariaDB ready (EXCHANGE_TEST_MYSQL_URL set)"
}

# ring, the bundled SQLite and zstd compile C.
command -v cc >/dev/null || apt_install build-essential
ensure_postgres
ensure_mariadb
# tests/tests/certificates.rs runs the certificate guide's openssl commands.
command -v openssl >/dev/null || apt_install openssl
# tests/tests/systemd_unit.rs runs systemd-analyze security/verify on the units (no running
# systemd needed: the package's tools work offline).
command -v systemd-analyze >/dev/null || apt_install systemd

log "cargo test --workspace"
# The tests read the agent's and the hub's English messages; the ones about Chinese set
# EXCHANGE_LANG=zh themselves. A zh_CN machine would otherwise print Chinese to them.
export EXCHANGE_LANG=en
cargo test --workspace "$@"
