#!/bin/sh
# postremove of agentplane-server (.deb postrm: remove, purge, upgrade, ...;
# .rpm %postun: $1 = 0 erase, 1 upgrade). Only a .deb purge deletes the state
# dir (the store, the CA and keys) and the agentplane user; dpkg deletes the
# conffiles itself. An rpm erase keeps both, as Fedora's guidelines ask.
set -e
if [ "$1" = purge ]; then
	rm -rf /var/lib/agentplane
	# A user still logged in or running keeps its account: say so, and let
	# the purge finish.
	if getent passwd agentplane >/dev/null; then
		userdel agentplane || echo "agentplane-server: could not remove the user agentplane" >&2
	fi
	if getent group agentplane >/dev/null; then
		groupdel agentplane || echo "agentplane-server: could not remove the group agentplane" >&2
	fi
fi
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi
