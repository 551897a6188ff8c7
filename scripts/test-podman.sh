#!/usr/bin/env bash
# test-podman.sh - Podman's Docker-compatible API service for the engine tests, beside the system engine.
#
#   scripts/test-podman.sh start NAME   install podman from Debian if missing, start
#                                       `podman system service` in its own network namespace with its
#                                       own storage root, runroot, tmpdir and network config under
#                                       $DGP_RUN/NAME (vfs storage, cgroupfs, events to a file);
#                                       prints DOCKER_HOST=unix://...
#   scripts/test-podman.sh exec NAME CMD...
#                                       run CMD inside NAME's network namespace with DOCKER_HOST set
#   scripts/test-podman.sh stop NAME    remove its containers, stop the service by its PID, unmount
#                                       what is left under its directory, delete its namespace and
#                                       data (its log is kept)
#
# Nothing of the system engine's state is used: not /var/lib/containers, not /run/containers, not
# /etc/cni/net.d (the network config dir is its own). Run `scripts/test-engine.sh check-host`
# afterwards to prove the system engine still runs a container on docker0.
#
# Environment: DGP_RUN (default /tmp/dgp-engines), DGP_START_TIMEOUT (seconds, default 60).
set -euo pipefail

DGP_RUN="${DGP_RUN:-/tmp/dgp-engines}"
say() { printf '%s\n' "$*" >&2; }
die() { say "test-podman.sh: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"

dir_of() { printf '%s/%s' "$DGP_RUN" "$1"; }
netns_of() { printf 'dgppod-%s-%s' "$1" "$(printf '%s' "$DGP_RUN" | sha256sum | cut -c1-6)"; }
socket_of() { printf '%s/podman.sock' "$(dir_of "$1")"; }

# podman_cmd NAME ARGS...: podman with NAME's own state, inside its namespace. It execs podman, so
# call it in a subshell: started as `(podman_cmd ...) &`, $! is the podman process itself.
podman_cmd() {
	local name="$1" d
	shift
	d="$(dir_of "$name")"
	CONTAINERS_CONF="$d/containers.conf" exec ip netns exec "$(netns_of "$name")" podman \
		--root "$d/root" --runroot "$d/runroot" --tmpdir "$d/tmp" --storage-driver vfs \
		--network-config-dir "$d/net" --cgroup-manager cgroupfs --events-backend file "$@"
}

cmd_start() {
	local name="$1" d ns sock deadline
	[[ "$name" =~ ^[a-z0-9]+$ ]] || die "NAME must be lower-case letters and digits: $name"
	if ! command -v podman >/dev/null; then
		say "test-podman.sh: installing podman from Debian"
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman >/dev/null ||
			{ apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman >/dev/null; }
	fi
	d="$(dir_of "$name")"
	ns="$(netns_of "$name")"
	sock="$(socket_of "$name")"
	[ ! -e "$d/pid" ] || die "$name is already started ($d/pid)"
	mkdir -p "$d/root" "$d/runroot" "$d/tmp" "$d/net"
	printf '[engine]\ncgroup_manager = "cgroupfs"\nevents_logger = "file"\nevents_logfile_path = "%s/events.log"\n' "$d" >"$d/containers.conf"
	ip netns add "$ns"
	ip netns exec "$ns" ip link set lo up
	(podman_cmd "$name" system service --time=0 "unix://$sock") >"$d/log" 2>&1 </dev/null &
	echo "$!" >"$d/pid"
	deadline=$((SECONDS + ${DGP_START_TIMEOUT:-60}))
	until curl -fsS --unix-socket "$sock" http://podman/_ping >/dev/null 2>&1; do
		if ! kill -0 "$(cat "$d/pid")" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
			tail -20 "$d/log" >&2
			die "podman system service for $name did not answer on $sock"
		fi
		sleep 0.2
	done
	say "test-podman.sh: $(podman --version) serving $sock (namespace $ns, state under $d)"
	echo "DOCKER_HOST=unix://$sock"
}

cmd_exec() {
	local name="$1"
	shift
	ip netns exec "$(netns_of "$name")" env "DOCKER_HOST=unix://$(socket_of "$name")" "$@"
}

cmd_stop() {
	local name="$1" d ns pid m
	d="$(dir_of "$name")"
	ns="$(netns_of "$name")"
	if [ -e "$d/pid" ]; then
		# Containers first: conmon outlives the service.
		(podman_cmd "$name" rm --all --force --time 0) >/dev/null 2>&1 || true
		pid="$(cat "$d/pid")"
		kill "$pid" 2>/dev/null || true
		for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -9 "$pid" 2>/dev/null || true
		rm -f "$d/pid"
	fi
	if pgrep -f -- "--root $d/root" >/dev/null; then
		die "a podman process of $name is still running: $(pgrep -af -- "--root $d/root" | head -3)"
	fi
	awk -v p="$d/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m" || true; done
	[ ! -e "/run/netns/$ns" ] || ip netns delete "$ns"
	if [ -d "$d" ]; then
		find "$d" -mindepth 1 -maxdepth 1 ! -name log -exec rm -rf {} +
	fi
	say "test-podman.sh: $name stopped"
}

case "${1:-}" in
start) [ $# = 2 ] || die "usage: start NAME"; cmd_start "$2" ;;
exec) [ $# -ge 3 ] || die "usage: exec NAME CMD..."; name="$2"; shift 2; cmd_exec "$name" "$@" ;;
stop) [ $# = 2 ] || die "usage: stop NAME"; cmd_stop "$2" ;;
*) sed -n '2,/^set -euo/{ /^set -euo/d; s/^# \{0,1\}//; p; }' "$0"; exit 2 ;;
esac
