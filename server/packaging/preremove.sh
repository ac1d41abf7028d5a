#!/bin/sh
# preremove of agentplane-server (.deb prerm: remove, upgrade, ...; .rpm
# %preun: $1 = 0 erase, 1 upgrade). On removal only: stop the server if
# systemd runs it, and disable the unit (which works without systemd running).
set -e
case "$1" in
remove | deconfigure | 0)
	if [ -d /run/systemd/system ]; then
		systemctl stop agentplane-server.service || true
	fi
	if command -v systemctl >/dev/null; then
		systemctl disable agentplane-server.service >/dev/null 2>&1 || true
	fi
	;;
esac
