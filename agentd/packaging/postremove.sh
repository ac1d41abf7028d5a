#!/bin/sh
# postremove of agentplane-agentd (.deb postrm: remove, purge, upgrade, ...;
# .rpm %postun: $1 = 0 erase, 1 upgrade). Only a .deb purge deletes the state
# dir: the host's key and certificate (enrolling again needs a join token
# bound to the host's name), host id and journal. dpkg deletes the conffiles.
set -e
if [ "$1" = purge ]; then
	rm -rf /var/lib/agentplane-agentd
fi
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi
