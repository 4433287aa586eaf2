#!/bin/sh
# install.sh of the @NAME@ tarball (made by scripts/package.sh): installs the tarball's files
# where the .deb puts them, for systems without dpkg (RPM-based Kylin Server, UOS Server, …),
# and does what the .deb's postinst does. Run as root from the unpacked directory:
#
#   tar -xzf @NAME@-<version>-<target>.tar.gz && cd @NAME@-<version>-<target> && ./install.sh
#
# Run again for an upgrade. A configuration under /etc/@NAME@ that exists is never
# overwritten: the new example is put beside it as <file>.new. The service is neither enabled
# nor started (docs/OPERATIONS.md). To remove: stop and disable the service, delete the files
# listed in /usr/share/doc/@NAME@/FILES; the data in /var/lib/@NAME@ stays.
set -eu
cd "$(dirname "$0")"
name=@NAME@
[ "$(id -u)" -eq 0 ] || { echo "install.sh: run as root" >&2; exit 1; }

# 1. The user and the directories (systemd's own tools where present, as the unit expects).
install -D -m 0644 "usr/lib/sysusers.d/$name.conf" "/usr/lib/sysusers.d/$name.conf"
install -D -m 0644 "usr/lib/tmpfiles.d/$name.conf" "/usr/lib/tmpfiles.d/$name.conf"
if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers "$name.conf"
elif ! getent passwd "$name" >/dev/null; then
    useradd --system --user-group --home-dir "/var/lib/$name" --no-create-home \
        --shell /usr/sbin/nologin "$name"
fi
if command -v systemd-tmpfiles >/dev/null 2>&1; then
    systemd-tmpfiles --create "$name.conf"
else
    install -d -m 0700 -o "$name" -g "$name" "/var/lib/$name"
    install -d -m 0750 -o root -g "$name" "/etc/$name" "/etc/$name/tls"
fi

# 2. The program, the unit and the documentation (replaced on upgrade).
files=""
for f in $(find usr -type f ! -path 'usr/lib/sysusers.d/*' ! -path 'usr/lib/tmpfiles.d/*' | sort); do
    mode=0644
    case "$f" in usr/bin/*) mode=0755 ;; esac
    install -D -m "$mode" "$f" "/$f"
    files="$files /$f"
done

# 3. The configuration: installed when absent, else left as it is (the new one beside it).
for f in $(find etc -type f | sort); do
    if [ -e "/$f" ]; then
        install -m 0640 -g "$name" "$f" "/$f.new"
        echo "kept /$f (the example of this version: /$f.new)"
    else
        install -m 0640 -g "$name" "$f" "/$f"
        echo "installed /$f: edit it before starting the service"
    fi
done

printf '%s\n' $files "/usr/lib/sysusers.d/$name.conf" "/usr/lib/tmpfiles.d/$name.conf" \
    > "/usr/share/doc/$name/FILES"
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    if systemctl is-active --quiet "$name"; then systemctl try-restart "$name"; fi
fi
echo "$name installed: /usr/bin/$name; then: systemctl enable --now $name"
