#!/bin/sh
# postinstall of agentplane-agentd (.deb postinst: configure; .rpm %post:
# $1 = 1 install, 2 upgrade). Idempotent; works without systemd running.
set -e

# The state dir holds the host's key: root's only (systemd's StateDirectory=
# makes it too, but not when agentd runs without it).
install -d -m 0700 /var/lib/agentplane-agentd

if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
	# An upgrade restarts a running agentd (KillMode=process: the OCP Agent
	# keeps running); a first install starts nothing.
	systemctl try-restart agentplane-agentd.service || true
fi
