#!/usr/bin/env bash
# The manual check of a release's packages (docs/OPERATIONS.md, "Checking a package"), on a
# scratch machine or container, as root: it installs packages, creates users, and purges.
#
#   scripts/package-check.sh --yes DIR      (DIR: a target/package/<target>/ from package.sh)
#
# 1. dpkg -i the agent and hub .debs of DIR; the files, user, directories and modes are checked;
# 2. systemd-analyze verify and security (exposure ≤ 1.5) on the installed units;
# 3. certificates (openssl, as docs/OPERATIONS.md issues them) into /etc/exchange-*/tls, the hub
#    on 127.0.0.1:18443 with its store in /var/lib/exchange-hub, the agent reading a SQLite
#    source; each runs as its service user in the foreground, as the unit would (or with
#    systemctl where systemd runs): check --connect, sync, run (/health, a new row delivered,
#    SIGTERM), hub export (the masked field arrives masked, the dropped one not at all), audit
#    verify;
# 4. the edited agent.toml survives dpkg -i of the same version and of a new version whose
#    example changed (--force-confdef --force-confold: .dpkg-dist beside it);
# 5. dpkg --purge keeps the queue, audit log and certificates (and so the user); removed first,
#    the purge leaves nothing: no file, directory, user or group of either package.
# Exits non-zero at the first failed step. Ports 18443 and 19464 on 127.0.0.1 must be free.
set -euo pipefail
{
[ "${1:-}" = "--yes" ] && [ $# -eq 2 ] || { sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
DIR=$(cd "$2" && pwd)
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 2; }
log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'FAILED: %s\n' "$*" >&2; exit 1; }
AGENT_DEB=$(ls "$DIR"/exchange-agent_*.deb) HUB_DEB=$(ls "$DIR"/exchange-hub_*.deb)
WORK=$(mktemp -d /tmp/package-check.XXXXXX)
PIDS=()
cleanup() { for p in ${PIDS[@]+"${PIDS[@]}"}; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
for p in exchange-agent exchange-hub; do
  ! dpkg -s "$p" >/dev/null 2>&1 || die "$p is installed already: purge it first"
  ! getent passwd "$p" >/dev/null || die "user $p exists already"
done

log "1. dpkg -i $(basename "$AGENT_DEB") $(basename "$HUB_DEB")"
dpkg -i "$AGENT_DEB" "$HUB_DEB" >/dev/null
for n in exchange-agent exchange-hub; do
  getent passwd "$n" >/dev/null || die "no user $n"
  for f in /usr/bin/$n /usr/lib/systemd/system/$n.service /usr/lib/sysusers.d/$n.conf /usr/lib/tmpfiles.d/$n.conf; do
    [ -f "$f" ] || die "missing $f"
  done
  [ "$(stat -c '%a %U:%G' /var/lib/$n)" = "700 $n:$n" ] || die "/var/lib/$n: $(stat -c '%a %U:%G' /var/lib/$n)"
  [ "$(stat -c '%a %U:%G' /etc/$n)" = "750 root:$n" ] || die "/etc/$n: $(stat -c '%a %U:%G' /etc/$n)"
done
[ "$(stat -c '%a %U:%G' /etc/exchange-agent/agent.toml)" = "640 root:exchange-agent" ] || die "agent.toml mode"
[ "$(stat -c '%a %U:%G' /etc/exchange-hub/hub.toml)" = "640 root:exchange-hub" ] || die "hub.toml mode"
grep -qx /etc/exchange-agent/agent.toml /var/lib/dpkg/info/exchange-agent.conffiles || die "agent.toml is no conffile"

log "2. systemd-analyze verify, security"
systemd-analyze verify /usr/lib/systemd/system/exchange-agent.service /usr/lib/systemd/system/exchange-hub.service
for n in exchange-agent exchange-hub; do
  e=$(systemd-analyze security --offline=true /usr/lib/systemd/system/$n.service 2>&1 | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
  awk -v e="$e" 'BEGIN { exit !(e != "" && e <= 1.5) }' || die "$n exposure '$e'"
  log "   $n: exposure $e"
done

log "3. certificates, configuration, foreground runs as the service users"
cd "$WORK"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj "/CN=Check CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -keyout ca.key -out ca.pem 2>/dev/null
issue() { # issue NAME CN EXT
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" -keyout "$1.key" -out "$1.csr" 2>/dev/null
  printf '%b' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 -extfile "$1.ext" -out "$1.pem" 2>/dev/null
}
issue hub localhost 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n'
issue node check-node-01 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n'
install -m 0644 ca.pem hub.pem /etc/exchange-hub/tls/
install -m 0600 -o exchange-hub hub.key /etc/exchange-hub/tls/hub.key
install -m 0644 ca.pem node.pem /etc/exchange-agent/tls/
install -m 0600 -o exchange-agent node.key /etc/exchange-agent/tls/node.key
sed -i 's|^addr = .*|addr = "127.0.0.1:18443"|' /etc/exchange-hub/hub.toml
mkdir -p /srv/package-check
python3 - <<'EOF'
import sqlite3
db = sqlite3.connect("/srv/package-check/business.db")
db.execute("create table insured_person(id integer not null primary key, id_card text not null, name text, mobile text, internal_note text, updated_at text not null)")
for i in range(1, 6):
    db.execute("insert into insured_person values(?,?,?,?,?,?)", (i, "ID%04d" % i, "name%d" % i, "1380000%04d" % i, "secret-note", "2026-01-01T00:00:0%dZ" % i))
db.commit()
EOF
chmod 0644 /srv/package-check/business.db
cat > /etc/exchange-agent/agent.toml <<'EOF'
# edited by scripts/package-check.sh
[node]
id = "check-node-01"
department = "11330100MB0123456W"
data_dir = "/var/lib/exchange-agent"

[hub]
url = "https://127.0.0.1:18443"
ca = "tls/ca.pem"
cert = "tls/node.pem"
key = "tls/node.key"

[admin]
listen = "127.0.0.1:19464"

[[sources]]
name = "rsj"
kind = "sqlite"
url = "sqlite:///srv/package-check/business.db"

[[resources]]
code = "330100-RSJ-0001"
name = "check"
share = "unconditional"
source = "rsj"
table = "insured_person"
key = "id_card"
mode = "incremental"
cursor = ["updated_at", "id"]
safety_lag = "0s"
every = "2s"

[resources.fields]
id_card = "plain"
name = "plain"
mobile = "mask:mobile"
internal_note = "drop"
EOF
EDITED=$(sha256sum < /etc/exchange-agent/agent.toml)
as_agent() { runuser -u exchange-agent -- /usr/bin/exchange-agent "$@" --config /etc/exchange-agent/agent.toml; }
wait_for() { # wait_for SECONDS COMMAND...
  local end=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do [ $SECONDS -lt $end ] || return 1; sleep 0.2; done
}
runuser -u exchange-hub -- /usr/bin/exchange-hub check --config /etc/exchange-hub/hub.toml >/dev/null
runuser -u exchange-hub -- /usr/bin/exchange-hub serve --config /etc/exchange-hub/hub.toml 2>"$WORK/hub.log" &
PIDS+=("$!")
wait_for 20 grep -q "Hub listening" "$WORK/hub.log" || die "hub did not listen: $(cat "$WORK/hub.log")"
as_agent check --connect >/dev/null || die "agent check --connect"
as_agent sync | grep -q "pulled 5 records; the hub acknowledged everything" || die "sync"
runuser -u exchange-agent -- /usr/bin/exchange-agent run --config /etc/exchange-agent/agent.toml 2>"$WORK/agent.log" &
APID=$!; PIDS+=("$APID")
wait_for 20 curl -sf http://127.0.0.1:19464/health || die "no /health: $(cat "$WORK/agent.log")"
python3 -c "import sqlite3; db=sqlite3.connect('/srv/package-check/business.db'); db.execute(\"insert into insured_person values(6,'ID0006','name6','13800000006','secret-note','2026-01-02T00:00:00Z')\"); db.commit()"
pushed() { curl -sf http://127.0.0.1:19464/metrics | grep -qx 'exchange_records_pushed_total{resource="330100-RSJ-0001"} 6'; }
wait_for 30 pushed || die "the new row was not pushed: $(tail -5 "$WORK/agent.log")"
kill -TERM $APID
wait_for 30 bash -c "! kill -0 $APID" || die "the agent did not stop on SIGTERM"
grep -q "Shutting down" "$WORK/agent.log" || die "the agent did not shut down: $(tail -3 "$WORK/agent.log")"
runuser -u exchange-hub -- /usr/bin/exchange-hub export --config /etc/exchange-hub/hub.toml --resource 330100-RSJ-0001 > "$WORK/export.ndjson"
[ "$(wc -l < "$WORK/export.ndjson")" -eq 6 ] || die "hub holds $(wc -l < "$WORK/export.ndjson") records, not 6"
grep -q '"mobile":"138\*\*\*\*0006"' "$WORK/export.ndjson" || die "mobile not masked"
! grep -q "secret-note\|13800000006" "$WORK/export.ndjson" || die "a dropped or masked value reached the hub"
as_agent audit verify | grep -q "intact" || die "audit verify"

log "4. conffile: the edited agent.toml survives reinstall and upgrade"
dpkg -i "$AGENT_DEB" </dev/null >/dev/null
[ "$(sha256sum < /etc/exchange-agent/agent.toml)" = "$EDITED" ] || die "reinstall overwrote agent.toml"
dpkg-deb -R "$AGENT_DEB" "$WORK/next"
echo "# changed in the next version" >> "$WORK/next/etc/exchange-agent/agent.toml"
sed -i 's/^Version: \(.*\)-\([0-9]*\)$/Version: \1-\2.1/' "$WORK/next/DEBIAN/control"
dpkg-deb --root-owner-group -b "$WORK/next" "$WORK/next.deb" >/dev/null
dpkg -i --force-confdef --force-confold "$WORK/next.deb" </dev/null >/dev/null
[ "$(sha256sum < /etc/exchange-agent/agent.toml)" = "$EDITED" ] || die "upgrade overwrote agent.toml"
[ -f /etc/exchange-agent/agent.toml.dpkg-dist ] || die "no agent.toml.dpkg-dist"

log "5. purge"
kill -TERM "${PIDS[0]}"; wait_for 30 bash -c "! kill -0 ${PIDS[0]}" || die "the hub did not stop"
dpkg --purge exchange-agent 2>"$WORK/purge.log" >/dev/null
[ -f /var/lib/exchange-agent/audit.jsonl ] && [ -f /etc/exchange-agent/tls/node.key ] || die "purge removed data or keys"
getent passwd exchange-agent >/dev/null || die "purge removed the user while its files stay"
grep -q "kept (not empty)" "$WORK/purge.log" || die "purge did not name what it kept"
rm -r /var/lib/exchange-agent /etc/exchange-agent && userdel exchange-agent
rm -r /var/lib/exchange-hub/* /etc/exchange-hub/tls/*
dpkg --purge exchange-hub >/dev/null 2>&1
for n in exchange-agent exchange-hub; do
  [ ! -e /etc/$n ] && [ ! -e /var/lib/$n ] && [ ! -e /usr/bin/$n ] && [ ! -e /usr/lib/systemd/system/$n.service ] \
    && [ ! -e /usr/lib/sysusers.d/$n.conf ] && [ ! -e /usr/lib/tmpfiles.d/$n.conf ] || die "$n left files"
  ! getent passwd $n >/dev/null && ! getent group $n >/dev/null || die "$n left its user or group"
done
rm -rf /srv/package-check "$WORK"
log "package check passed: $DIR"
exit 0
}
