#!/bin/sh
# preremove of agentplane-agentd (.deb prerm: remove, upgrade, ...; .rpm
# %preun: $1 = 0 erase, 1 upgrade). On removal only: stop agentd if systemd
# runs it (the OCP Agent keeps running), and disable the unit (which works
# without systemd running).
set -e
case "$1" in
remove | deconfigure | 0)
	if [ -d /run/systemd/system ]; then
		systemctl stop agentplane-agentd.service || true
	fi
	if command -v systemctl >/dev/null; then
		systemctl disable agentplane-agentd.service >/dev/null 2>&1 || true
	fi
	;;
esac
