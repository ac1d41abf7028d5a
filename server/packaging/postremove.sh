#!/bin/sh
# postremove of agentplane-server (.deb postrm: remove, purge, upgrade, ...;
# .rpm %postun: $1 = 0 erase, 1 upgrade). Only a .deb purge deletes the state
# dir (the store, the CA and keys) and the agentplane user; dpkg deletes the
# conffiles itself. An rpm erase keeps both, as Fedora's guidelines ask.
set -e
if [ "$1" = purge ]; then
	rm -rf /var/lib/agentplane
	if getent passwd agentplane >/dev/null; then
		userdel agentplane
	fi
	if getent group agentplane >/dev/null; then
		groupdel agentplane
	fi
fi
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi
