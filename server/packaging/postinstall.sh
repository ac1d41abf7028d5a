#!/bin/sh
# postinstall of agentplane-server (.deb postinst: configure; .rpm %post:
# $1 = 1 install, 2 upgrade). Idempotent; works without systemd running.
set -e

# The server's system user and group, and its state dir (systemd's
# StateDirectory= makes it too, but not when the server runs without it).
if ! getent passwd agentplane >/dev/null; then
	nologin=/usr/sbin/nologin
	[ -x "$nologin" ] || nologin=/sbin/nologin
	getent group agentplane >/dev/null || groupadd --system agentplane
	useradd --system --gid agentplane --home-dir /var/lib/agentplane --no-create-home \
		--shell "$nologin" --comment "agentplane server" agentplane
fi
install -d -m 0750 -o agentplane -g agentplane /var/lib/agentplane

if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
	# An upgrade restarts a running server; a first install starts nothing.
	systemctl try-restart agentplane-server.service || true
fi
