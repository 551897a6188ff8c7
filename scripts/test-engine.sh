#!/usr/bin/env bash
# test-engine.sh - a current Docker Engine (29.x) for the e2e tests, running beside the system engine.
#
# The e2e package talks to whatever DOCKER_HOST names. This script builds Docker Engine 29.x from the
# Go module proxy and starts isolated instances of it, so the suite can run on the containerd image
# store (29's default) or the classic graphdriver store without touching the system engine at
# /var/run/docker.sock. See docs/test-engines.md for measured times and what these engines report.
#
#   scripts/test-engine.sh build                    build dockerd, docker-proxy, the containerd shim
#                                                    and runc once; later calls reuse the binaries
#   scripts/test-engine.sh start NAME [--classic] [--containerd-tmpfs=SIZE]
#                                                    start engine NAME; prints DOCKER_HOST=unix://...;
#                                                    --containerd-tmpfs puts containerd's root on a tmpfs
#                                                    of SIZE (e.g. 160m), a filesystem apart from the data root
#   scripts/test-engine.sh swarm NAME [--classic]   start engines NAME1..NAME3, each in its own network
#                                                    and UTS namespace (hostname NAME<i>), cabled to a
#                                                    bridge in a hub namespace, and make them a swarm of
#                                                    3 managers; prints DOCKER_HOST_1..3=unix://... and
#                                                    SWARM_NODES=NAME1,NAME2,NAME3
#   scripts/test-engine.sh load NAME IMAGE          copy IMAGE from the system engine (docker save) into
#                                                    every node of swarm NAME, or into engine NAME
#   scripts/test-engine.sh link NAME I down|up      cut or restore the cable of swarm NAME's node I
#   scripts/test-engine.sh stop NAME | --all        stop it and remove its processes, mounts, cgroups,
#                                                    network namespace and data (its log is kept); for
#                                                    a swarm, all its nodes and its hub namespace;
#                                                    --all means every engine and swarm under $DGP_RUN,
#                                                    whoever started it: give each user or CI job its
#                                                    own DGP_RUN
#   scripts/test-engine.sh status                   list the engines and swarms under $DGP_RUN
#   scripts/test-engine.sh exec NAME CMD...         run CMD inside NAME's network namespace with
#                                                    DOCKER_HOST set (for tests that serve on 127.0.0.1)
#   scripts/test-engine.sh check-host               prove the system engine still runs a container on
#                                                    its default bridge (docker0)
#
# Typical use:
#   scripts/test-engine.sh build
#   export "$(scripts/test-engine.sh start e29)"
#   DGP_REQUIRE_ENGINE=1 go test -count=1 ./e2e
#   scripts/test-engine.sh stop e29 && scripts/test-engine.sh check-host
# A swarm of 3 managers (docs/test-engines.md, "Swarms"):
#   export $(scripts/test-engine.sh swarm fl)       # DOCKER_HOST_1..3, SWARM_NODES
#   scripts/test-engine.sh load fl IMAGE            # from the system engine: nothing can be pulled
#   DOCKER_HOST=$DOCKER_HOST_1 docker service create --mode global-job --no-resolve-image \
#     --mount "type=bind,source=${DGP_RUN:-/tmp/dgp-engines}/{{.Node.Hostname}}/docker.sock,target=/var/run/docker.sock" IMAGE
#     (each task gets its own node's socket; a plain /var/run/docker.sock is the system engine's)
#   scripts/test-engine.sh link fl 3 down           # fl3 goes Down in `docker node ls` on fl1
#   scripts/test-engine.sh stop fl
# TestImageAsDroneRunsIt binds the host's /var/run/docker.sock into its plugin container, so on any
# other engine it prunes the system engine: skip it. TestPruneKeepsCacheWarm serves a registry on
# the test's 127.0.0.1, which the engine sees only when the tests run in its namespace:
#   scripts/test-engine.sh exec e29 env DGP_REQUIRE_ENGINE=1 go test -count=1 ./e2e
# (the namespace has loopback only: download modules first, e.g. with a plain `go test` build).
#
# What isolates an engine from the system one:
#   * its own network namespace (ip netns "dgp-NAME-<hash of $DGP_RUN>"). A dockerd configured with "bridge": "none"
#     deletes any interface called docker0 in its namespace when it starts; in the host namespace that
#     would take the system engine's default bridge away. This script refuses to start a dockerd in the
#     host namespace. The unix socket is a file, so the host still reaches the engine through it.
#   * its own --config-file (the system /etc/docker/daemon.json is never read), socket, data root,
#     exec root, pid file and cgroup parent (/dgp-NAME-<hash>), all under $DGP_RUN/NAME except the
#     cgroups.
#   * containerd runs embedded in dockerd, with its state under the engine's data and exec roots.
#   * iptables, ip6tables, ip-forward and ip-masq are off: no firewall rule or sysctl changes anywhere.
#
# Environment:
#   DGP_CACHE               binary cache root (default $HOME/.cache/drone-gated-prune); binaries go to
#                           $DGP_CACHE/engine/<engine version>/
#   DGP_RUN                 engines' state root (default /tmp/dgp-engines)
#   DGP_MOBY_VERSION        github.com/moby/moby/v2 module version to build (default below; "latest" =
#                           the newest version the Go module proxy serves)
#   DGP_CONTAINERD_VERSION  containerd module version for the shim (default: what that moby pins)
#   DGP_RUNC_VERSION        runc version (default: what that moby pins)
#   DGP_CLASSIC_DRIVER      graphdriver for --classic (default overlay2)
#   DGP_START_TIMEOUT       seconds to wait for a starting engine to answer (default 60)
#   DGP_SYSTEM_DOCKER_HOST  the system engine for check-host (default unix:///var/run/docker.sock)
#   GOCACHE, GOMODCACHE     honoured as usual (a cold engine build puts about 1.4 GB in each)
#
# Needs: root; Go (moby's go.mod sets the minimum); gcc; pkg-config; iproute2; util-linux (nsenter,
# setsid); the docker CLI; the Go module proxy; libseccomp-dev for runc (installed with apt-get when
# missing).
set -euo pipefail

# Docker Engine 29.8.0 is github.com/moby/moby/v2@v2.0.0-beta.24 (its releases/versions.yaml); the
# newest version the proxy served on 2026-11-27 (`go list -m -versions github.com/moby/moby/v2`).
readonly MOBY_PINNED=v2.0.0-beta.24

DGP_CACHE=${DGP_CACHE:-$HOME/.cache/drone-gated-prune}
DGP_RUN=${DGP_RUN:-/tmp/dgp-engines}
DGP_CLASSIC_DRIVER=${DGP_CLASSIC_DRIVER:-overlay2}
DGP_START_TIMEOUT=${DGP_START_TIMEOUT:-60}
DGP_SYSTEM_DOCKER_HOST=${DGP_SYSTEM_DOCKER_HOST:-unix:///var/run/docker.sock}
# Our go commands build modules by version; a caller's -mod=vendor or go.work must not leak in.
export GOFLAGS=-buildvcs=false GOWORK=off

say() { printf '%s\n' "$*" >&2; }
die() { say "test-engine.sh: $*"; exit 1; }
now() { printf '%s' "$EPOCHREALTIME"; }
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }

need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root (network namespaces, mounts, cgroups)"; }

check_paths() {
	case "$DGP_RUN" in
	/*) ;;
	*) die "DGP_RUN must be an absolute path, got '$DGP_RUN'" ;;
	esac
	case "$DGP_RUN$DGP_CACHE" in
	*[[:space:]]*) die "DGP_RUN and DGP_CACHE must not contain whitespace (mount table parsing)" ;;
	esac
	[ "$DGP_RUN" != / ] || die "DGP_RUN must not be /"
}

check_name() {
	[[ "$1" =~ ^[a-z0-9][a-z0-9_-]{0,23}$ ]] ||
		die "engine name '$1': use 1-24 characters of a-z, 0-9, '-' or '_', starting with a letter or digit"
}

# ---------------------------------------------------------------------------------------- versions

# A directory without go.mod, so `go mod download` and `go install pkg@v` ignore the caller's module.
go_scratch() {
	mkdir -p "$DGP_CACHE/engine"
	printf '%s' "$DGP_CACHE/engine"
}

newest_moby() {
	(cd "$(go_scratch)" && go list -m -versions github.com/moby/moby/v2) | awk '{ print $NF }'
}

wanted_moby() {
	local v=${DGP_MOBY_VERSION:-$MOBY_PINNED}
	if [ "$v" = latest ]; then
		v=$(newest_moby)
		[ -n "$v" ] || die "the Go module proxy lists no version of github.com/moby/moby/v2"
	fi
	printf '%s' "$v"
}

# Sets MOBY, ENGINE_VERSION, CONTAINERD, RUNC from the moby module's own files: the engine version is
# the last release in its releases/versions.yaml, the shim and runc are what its Dockerfile pins.
resolve_versions() {
	local dir
	MOBY=$(wanted_moby)
	dir=$(cd "$(go_scratch)" && go mod download -json "github.com/moby/moby/v2@$MOBY" |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	[ -d "$dir" ] || die "could not download github.com/moby/moby/v2@$MOBY"
	ENGINE_VERSION=$(awk '/^docker:/ { d = 1 } d && $1 == "last:" { gsub(/"/, "", $2); print $2; exit }' \
		"$dir/releases/versions.yaml" 2>/dev/null || true)
	ENGINE_VERSION=${ENGINE_VERSION:-$MOBY}
	CONTAINERD=${DGP_CONTAINERD_VERSION:-$(sed -n '/^ARG CONTAINERD_VERSION=/{s///p;q;}' "$dir/Dockerfile")}
	RUNC=${DGP_RUNC_VERSION:-$(sed -n '/^ARG RUNC_VERSION=/{s///p;q;}' "$dir/Dockerfile")}
	[ -n "$CONTAINERD" ] || die "no CONTAINERD_VERSION in moby $MOBY's Dockerfile: set DGP_CONTAINERD_VERSION"
	[ -n "$RUNC" ] || die "no RUNC_VERSION in moby $MOBY's Dockerfile: set DGP_RUNC_VERSION"
	local vendored
	vendored=$(awk '$1 == "github.com/containerd/containerd/v2" { print $2; exit }' "$dir/go.mod")
	if [ -n "$vendored" ] && [ "$vendored" != "$CONTAINERD" ]; then
		say "note: dockerd embeds containerd $vendored; the shim is $CONTAINERD"
	fi
}

# The cache directory holding binaries built from moby module $1 (found by its BUILDINFO), or nothing.
engine_dir_for() {
	local f
	for f in "$DGP_CACHE"/engine/*/BUILDINFO; do
		[ -f "$f" ] || continue
		if grep -qxF "moby=$1" "$f" && [ -x "$(dirname "$f")/dockerd" ]; then
			dirname "$f"
			return 0
		fi
	done
	return 0
}

# -------------------------------------------------------------------------------------------- build

ensure_libseccomp() {
	pkg-config --exists libseccomp 2>/dev/null && return 0
	command -v apt-get >/dev/null ||
		die "runc needs libseccomp headers and its static library (Debian: libseccomp-dev); install them"
	local t as_root=()
	[ "$(id -u)" = 0 ] || as_root=(sudo)
	t=$(now)
	say "installing libseccomp-dev with apt-get (runc is built with seccomp support)"
	"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
	"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libseccomp-dev >&2
	say "  apt-get libseccomp-dev: $(since "$t") s"
	pkg-config --exists libseccomp || die "libseccomp-dev installed, yet pkg-config finds no libseccomp"
}

# build_part PART KEY DEST CMD...: skip when DEST/.stamp-PART holds KEY; else run CMD (a go install)
# with GOBIN at a staging directory and move the binaries in, so an interrupted build leaves no
# half state behind.
build_part() {
	local part=$1 key=$2 dest=$3 t stage f
	shift 3
	if [ -f "$dest/.stamp-$part" ] && [ "$(cat "$dest/.stamp-$part")" = "$key" ]; then
		say "  $part: cached ($key)"
		return 0
	fi
	t=$(now)
	stage=$(mktemp -d "$dest/.stage-$part.XXXXXX")
	(cd "$(go_scratch)" && GOBIN=$stage "$@") >&2 || {
		rm -rf "$stage"
		die "building $part failed"
	}
	for f in "$stage"/*; do mv -f "$f" "$dest/"; done
	rmdir "$stage"
	printf '%s\n' "$key" >"$dest/.stamp-$part"
	say "  $part: built in $(since "$t") s ($key)"
}

cmd_build() {
	check_paths
	local t0 dest
	t0=$(now)
	command -v go >/dev/null || die "go not found"
	command -v gcc >/dev/null || die "gcc not found (dockerd and runc are cgo builds)"
	ensure_libseccomp
	resolve_versions
	dest=$DGP_CACHE/engine/$ENGINE_VERSION
	mkdir -p "$dest"
	say "building Docker Engine $ENGINE_VERSION (moby $MOBY), containerd shim $CONTAINERD, runc $RUNC into $dest"

	# dockerd the way moby's hack/make.sh builds its static binaries (cgo on, netgo/osusergo,
	# static_build, -extldflags -static), minus btrfs, whose driver needs headers Debian lacks here.
	local dv=github.com/moby/moby/v2/dockerversion
	build_part dockerd "moby=$MOBY" "$dest" \
		env CGO_ENABLED=1 go install \
		-tags "netgo osusergo static_build nri_no_wasm exclude_graphdriver_btrfs" \
		-ldflags "-w -extldflags -static -X $dv.Version=$ENGINE_VERSION -X $dv.GitCommit=$MOBY -X $dv.BuildTime=$(date -u +%Y-%m-%dT%H:%M:%SZ) -X '$dv.PlatformName=Docker Engine - drone-gated-prune test build'" \
		"github.com/moby/moby/v2/cmd/dockerd@$MOBY" "github.com/moby/moby/v2/cmd/docker-proxy@$MOBY"

	# Only the shim: containerd itself runs embedded in dockerd. The host's containerd 1.6 shim does
	# not work with containerd 2.x, so a matching one goes next to dockerd. containerd builds its shim
	# without cgo, as here.
	build_part shim "containerd=$CONTAINERD" "$dest" \
		env CGO_ENABLED=0 go install \
		-ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD" \
		"github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD"

	# runc as its Makefile's static target builds it. Engine 29 asks for a time namespace, which the
	# host's runc 1.1 does not know.
	build_part runc "runc=$RUNC" "$dest" \
		env CGO_ENABLED=1 go install \
		-tags "seccomp urfave_cli_no_docs netgo osusergo" \
		-ldflags "-s -w -X main.version=${RUNC#v} -extldflags -static" \
		"github.com/opencontainers/runc@$RUNC"

	{
		printf 'moby=%s\nengine=%s\ncontainerd=%s\nrunc=%s\n' "$MOBY" "$ENGINE_VERSION" "$CONTAINERD" "$RUNC"
		printf 'go=%s\n' "$(go env GOVERSION)"
	} >"$dest/BUILDINFO"
	# Each binary must run here; whole outputs are read (piping into head can SIGPIPE them).
	local out
	out=$("$dest/dockerd" --version) && say "  ${out%%$'\n'*}"
	out=$("$dest/runc" --version) && say "  ${out%%$'\n'*}"
	out=$("$dest/containerd-shim-runc-v2" -v) && say "  containerd-shim-runc-v2 $(awk '$1 == "Version:" { print $2 }' <<<"$out")"
	say "build: $(since "$t0") s total; binaries $(du -sh "$dest" | cut -f1) in $dest"
}

# --------------------------------------------------------------------------------- engine plumbing

engine_host() { printf 'unix://%s/docker.sock' "$DGP_RUN/$1"; }
# The machine-wide name of NAME's network namespace and cgroup parent. It carries a hash of
# $DGP_RUN, so two state roots that both have an engine e29 never act on each other's.
run_hash() { printf '%s' "$DGP_RUN" | sha256sum | cut -c1-6; }
engine_tag() { printf 'dgp-%s-%s' "$1" "$(run_hash)"; }
engine_netns() { engine_tag "$1"; }
edocker() {
	local name=$1
	shift
	docker --host "$(engine_host "$name")" "$@"
}

# The PID of NAME's dockerd if it is running: the recorded PID, and only if that process is a
# dockerd started with NAME's config file (a recycled PID is left alone).
engine_pid() {
	local dir=$DGP_RUN/$1 pid f cmd
	for f in "$dir/dockerd.pid" "$dir/launcher.pid"; do
		[ -f "$f" ] || continue
		pid=$(cat "$f")
		[[ "$pid" =~ ^[0-9]+$ ]] || continue
		cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || continue
		if [[ "$cmd" == *"--config-file $dir/daemon.json"* ]]; then
			printf '%s' "$pid"
			return 0
		fi
	done
	return 0
}

mounts_under() { awk -v p="$1/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo; }

netns_exists() { [ -e "/run/netns/$1" ]; }

same_netns_as_host() {
	[ "$(stat -Lc %i "$1")" = "$(stat -Lc %i /proc/self/ns/net)" ]
}

# Cgroup directories created under NAME's cgroup parent (cgroup v1 controllers or the v2 tree).
engine_cgroups() {
	find /sys/fs/cgroup -maxdepth 2 -type d -name "$(engine_tag "$1")" 2>/dev/null || true
}

write_daemon_json() {
	local name=$1 classic=$2 dir=$DGP_RUN/$1 store
	if [ "$classic" = 1 ]; then
		store="\"storage-driver\": \"$DGP_CLASSIC_DRIVER\",
  \"features\": { \"embedded-containerd\": true, \"containerd-snapshotter\": false },"
	else
		# The containerd image store is 29's default (naming it only draws a warning in the log).
		store='"features": { "embedded-containerd": true },'
	fi
	cat >"$dir/daemon.json" <<EOF
{
  "hosts": ["unix://$dir/docker.sock"],
  "data-root": "$dir/data",
  "exec-root": "$dir/exec",
  "pidfile": "$dir/dockerd.pid",
  "cgroup-parent": "/$(engine_tag "$name")",
  "bridge": "none",
  "iptables": false,
  "ip6tables": false,
  "ip-forward": false,
  "ip-masq": false,
  "shutdown-timeout": 5,
  $store
  "log-level": "info"
}
EOF
}

# A failed start is cleaned up like a stop; the log stays for the reason.
start_failed() {
	local name=$1 why=$2
	tail -15 "$DGP_RUN/$name/dockerd.log" >&2 || true
	stop_one "$name" || true
	die "$why (log: $DGP_RUN/$name/dockerd.log)"
}

# prepare_engine NAME CLASSIC CTMPFS: everything before dockerd runs: the checks, a fresh state
# directory with its daemon.json, and NAME's network namespace (loopback up). Sets ENGINE_BIN for
# launch_engine.
prepare_engine() {
	local name=$1 classic=$2 ctmpfs=$3 moby dir=$DGP_RUN/$1 ns
	ns=$(engine_netns "$name")
	moby=$(wanted_moby)
	ENGINE_BIN=$(engine_dir_for "$moby")
	[ -n "$ENGINE_BIN" ] || die "no engine built from moby $moby under $DGP_CACHE/engine: run 'test-engine.sh build' first"
	[ -z "$(engine_pid "$name")" ] || die "engine $name is running: stop it first"
	[ -z "$(mounts_under "$dir")" ] || die "mounts are left under $dir: run 'test-engine.sh stop $name'"
	! netns_exists "$ns" || die "network namespace $ns exists: run 'test-engine.sh stop $name'"
	! is_swarm "$name" || die "$name is a swarm: run 'test-engine.sh stop $name' first"

	rm -rf --one-file-system "$dir"
	mkdir -p "$dir"
	write_daemon_json "$name" "$classic"
	if [ -n "$ctmpfs" ]; then
		# The embedded containerd keeps image content and snapshots under <data-root>/containerd/daemon:
		# a small filesystem of its own there fills up while the data root does not.
		# The data root is made a mount point first: dockerd bind-mounts a data root that is not one
		# onto itself at start, which would hide a filesystem mounted beneath it.
		mkdir -p "$dir/data/containerd/daemon"
		mount --bind "$dir/data" "$dir/data"
		mount -t tmpfs -o "size=$ctmpfs" tmpfs "$dir/data/containerd/daemon"
	fi
	printf '%s\n' "$([ "$classic" = 1 ] && echo "classic ($DGP_CLASSIC_DRIVER)" || echo containerd)" >"$dir/store"

	ip netns add "$ns"
	ip -n "$ns" link set lo up
	! same_netns_as_host "/run/netns/$ns" || start_failed "$name" "refusing: /run/netns/$ns is the host's network namespace"
}

# launch_engine NAME [HOSTNAME]: starts NAME's dockerd in its namespace and waits until it answers.
# With HOSTNAME, dockerd also gets a UTS namespace of its own (pinned on $DGP_RUN/NAME/uts) whose
# hostname is HOSTNAME: a swarm names its nodes after their engines' hostnames.
launch_engine() {
	local name=$1 host=${2:-} dir=$DGP_RUN/$1 ns pid i ver t uts=() had_docker0=0
	t=$(now)
	ns=$(engine_netns "$name")
	ip link show docker0 >/dev/null 2>&1 && had_docker0=1
	if [ -n "$host" ]; then
		: >"$dir/uts"
		unshare --uts="$dir/uts" hostname "$host" || start_failed "$name" "could not make a UTS namespace for $name"
		uts=(--uts="$dir/uts")
	fi

	# setsid: the engine outlives this shell and ignores the terminal's signals. setsid, nsenter and
	# env all exec, so $! is dockerd's own PID. A clean environment keeps the caller's DOCKER_* and
	# proxy variables out of the engine (DOCKER_CONTAINERD_ROOT, say, would move its containerd root);
	# our bin directory comes first in PATH for runc and the shim.
	setsid nsenter --net="/run/netns/$ns" "${uts[@]}" env -i HOME=/root \
		PATH="$ENGINE_BIN:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
		"$ENGINE_BIN/dockerd" --config-file "$dir/daemon.json" >"$dir/dockerd.log" 2>&1 </dev/null &
	pid=$!
	printf '%s\n' "$pid" >"$dir/launcher.pid"

	for ((i = 0; i < DGP_START_TIMEOUT * 10; i++)); do
		ver=$(edocker "$name" version --format '{{.Server.Version}}' 2>/dev/null) && break
		kill -0 "$pid" 2>/dev/null || start_failed "$name" "dockerd $name exited while starting"
		sleep 0.1
	done
	[ -n "${ver:-}" ] || start_failed "$name" "dockerd $name did not answer within ${DGP_START_TIMEOUT}s"
	[ "$(readlink "/proc/$pid/ns/net")" != "$(readlink /proc/self/ns/net)" ] ||
		start_failed "$name" "dockerd $name ran in the host network namespace"
	if [ "$had_docker0" = 1 ] && ! ip link show docker0 >/dev/null 2>&1; then
		say "WARNING: the host's docker0 disappeared while $name started"
	fi
	say "engine $name: Docker $ver, $(edocker "$name" info --format 'store {{.Driver}}{{range .DriverStatus}}, {{index . 0}}: {{index . 1}}{{end}}'), pid $pid, netns $ns${host:+, hostname $host}, up in $(since "$t") s"
}

cmd_start() {
	need_root start
	check_paths
	local name="" classic=0 ctmpfs="" arg
	for arg in "$@"; do
		case $arg in
		--classic) classic=1 ;;
		--containerd-tmpfs=*) ctmpfs=${arg#--containerd-tmpfs=} ;;
		-*) die "start: unknown option $arg" ;;
		*) [ -z "$name" ] || die "start: one engine name only"; name=$arg ;;
		esac
	done
	[ -n "$name" ] || die "usage: test-engine.sh start NAME [--classic] [--containerd-tmpfs=SIZE]"
	check_name "$name"
	command -v docker >/dev/null || die "the docker CLI is needed to talk to the engine"
	prepare_engine "$name" "$classic" "$ctmpfs"
	launch_engine "$name"
	printf 'DOCKER_HOST=%s\n' "$(engine_host "$name")"
}

# Kills PIDs (TERM, then KILL after a grace period), never this script or its ancestors.
kill_pids() {
	local grace=$1 pid i alive self=" $$ " p=$$
	shift
	while [ "$p" -gt 1 ]; do
		p=$(awk '{ print $4 }' "/proc/$p/stat" 2>/dev/null || echo 1)
		self+="$p "
	done
	local targets=()
	for pid in "$@"; do
		[[ "$self" == *" $pid "* ]] && continue
		kill -0 "$pid" 2>/dev/null || continue
		say "  stopping leftover pid $pid: $(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | cut -c1-100)"
		kill -TERM "$pid" 2>/dev/null || true
		targets+=("$pid")
	done
	for ((i = 0; i < grace * 10; i++)); do
		alive=0
		for pid in "${targets[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
		[ "$alive" = 0 ] && return 0
		sleep 0.1
	done
	for pid in "${targets[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}

# Processes that belong to NAME: in its network namespace, in its cgroups (container payloads,
# which have namespaces of their own), or engine programs naming its directory (shims).
engine_leftovers() {
	local name=$1 dir=$DGP_RUN/$1 ns cg p cmd
	ns=$(engine_netns "$name")
	netns_exists "$ns" && ip netns pids "$ns" 2>/dev/null
	for cg in $(engine_cgroups "$name"); do
		find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null
	done
	for p in /proc/[0-9]*; do
		cmd=$(tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
		[[ "$cmd" == *"$dir/"* ]] || continue
		case $(basename "${cmd%% *}") in
		dockerd | containerd | containerd-shim* | docker-proxy | runc) printf '%s\n' "${p#/proc/}" ;;
		esac
	done
}

stop_one() {
	local name=$1 dir=$DGP_RUN/$1 ns pid i t m left
	t=$(now)
	ns=$(engine_netns "$name")
	if [ ! -d "$dir" ] && ! netns_exists "$ns"; then
		say "engine $name: nothing to stop"
		return 0
	fi
	pid=$(engine_pid "$name")
	if [ -n "$pid" ]; then
		# SIGTERM: dockerd stops its containers, its embedded containerd and unmounts what it mounted.
		kill -TERM "$pid"
		for ((i = 0; i < 300; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			say "  dockerd $name (pid $pid) ignored SIGTERM for 30 s: SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	mapfile -t left < <(engine_leftovers "$name" | sort -un)
	[ "${#left[@]}" = 0 ] || kill_pids 5 "${left[@]}"

	# Deepest first; a busy mount is detached lazily so the namespace and state can go.
	local mounts
	for i in 1 2 3; do
		mounts=$(mounts_under "$dir" | sort -r)
		[ -n "$mounts" ] || break
		for m in $mounts; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
	done
	if netns_exists "$ns"; then ip netns delete "$ns"; fi
	local cg
	for cg in $(engine_cgroups "$name"); do
		find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
	done
	if [ -z "$(mounts_under "$dir")" ]; then
		rm -rf --one-file-system "$dir/data" "$dir/exec"
	else
		say "  WARNING: mounts remain under $dir; its data was kept"
	fi
	rm -f "$dir/docker.sock" "$dir/dockerd.pid" "$dir/launcher.pid" "$dir/uts"

	left=()
	mapfile -t left < <(engine_leftovers "$name" | sort -un)
	local problems=""
	[ "${#left[@]}" = 0 ] || problems+=" processes:${left[*]}"
	[ -z "$(mounts_under "$dir")" ] || problems+=" mounts"
	! netns_exists "$ns" || problems+=" netns"
	[ -z "$(engine_cgroups "$name")" ] || problems+=" cgroups:$(engine_cgroups "$name" | tr '\n' ' ')"
	if [ -n "$problems" ]; then
		say "engine $name: stopped, but left behind:$problems"
		return 1
	fi
	say "engine $name: stopped in $(since "$t") s; nothing left running (log kept: $dir/dockerd.log)"
}

cmd_stop() {
	need_root stop
	check_paths
	[ $# = 1 ] || die "usage: test-engine.sh stop NAME | --all"
	local rc=0 d name ns done=" "
	if [ "$1" = --all ]; then
		# Swarms first (all their nodes at once), then the engines that were no swarm's node.
		for d in "$DGP_RUN"/*/; do
			[ -f "$d/swarm" ] || continue
			name=$(basename "$d")
			stop_swarm "$name" || rc=1
			done+="$(swarm_nodes "$name" | tr '\n' ' ')"
		done
		# A hub whose swarm record is gone (its directory removed by hand) is not left behind either.
		for ns in /run/netns/dgphub-*-"$(run_hash)"; do
			[ -e "$ns" ] || continue
			ns=${ns#/run/netns/dgphub-}
			stop_swarm "${ns%-*}" || rc=1
			done+="$(swarm_nodes "${ns%-*}" | tr '\n' ' ')"
		done
		for d in "$DGP_RUN"/*/; do
			[ -f "$d/daemon.json" ] || continue
			name=$(basename "$d")
			[[ "$done" == *" $name "* ]] && continue
			stop_one "$name" || rc=1
		done
		return "$rc"
	fi
	check_name "$1"
	# A stopped swarm keeps its swarm.log and no daemon.json: stopping it again checks its nodes.
	if is_swarm "$1" || netns_exists "$(hub_netns "$1")" ||
		{ [ -f "$DGP_RUN/$1/swarm.log" ] && [ ! -f "$DGP_RUN/$1/daemon.json" ]; }; then
		stop_swarm "$1"
	else
		stop_one "$1"
	fi
}

cmd_status() {
	check_paths
	local d name pid i links
	for d in "$DGP_RUN"/*/; do
		[ -f "$d/swarm" ] || continue
		name=$(basename "$d")
		links=""
		for ((i = 1; i <= SWARM_SIZE; i++)); do
			links+=" node$i:$(ip -n "$(hub_netns "$name")" -br link show "node$i" 2>/dev/null | awk '{ print $2 }' || true)"
		done
		printf '%-12s swarm    nodes %s  subnet %s.0/24  links%s\n' "$name" "$(swarm_nodes "$name" | paste -sd,)" \
			"$(swarm_prefix "$name")" "$links"
	done
	for d in "$DGP_RUN"/*/; do
		[ -f "$d/daemon.json" ] || continue
		name=$(basename "$d")
		pid=$(engine_pid "$name")
		if [ -n "$pid" ]; then
			printf '%-12s running  pid %-8s %-22s DOCKER_HOST=%s  (%s)\n' "$name" "$pid" "$(cat "$d/store")" \
				"$(engine_host "$name")" "$(du -sh "$DGP_RUN/$name" 2>/dev/null | cut -f1)"
		else
			printf '%-12s stopped  log %s\n' "$name" "$DGP_RUN/$name/dockerd.log"
		fi
	done
}

cmd_exec() {
	need_root exec
	check_paths
	[ $# -ge 2 ] || die "usage: test-engine.sh exec NAME CMD..."
	local name=$1
	shift
	check_name "$name"
	! is_swarm "$name" || die "$name is a swarm: exec one of its nodes ($(swarm_nodes "$name" | paste -sd' '))"
	[ -n "$(engine_pid "$name")" ] || die "engine $name is not running"
	exec nsenter --net="/run/netns/$(engine_netns "$name")" env DOCKER_HOST="$(engine_host "$name")" "$@"
}

# ------------------------------------------------------------------------------------------ swarms

# A swarm NAME is SWARM_SIZE engines NAME1..NAMEn, all managers. Each node is an ordinary engine of
# this script (own network namespace, state under $DGP_RUN/NAME<i>, `exec NAME<i>` works) plus a UTS
# namespace whose hostname is NAME<i>, because swarm names a node after its engine's hostname. The
# nodes' eth0 are veths into a hub namespace, where their peers node1..nodeN hang on bridge br0.
# Nodes have the addresses <swarm_prefix>.1..N/24; these exist only inside the swarm's namespaces.
# The hub also keeps swarm traffic (2377/tcp cluster, 7946/tcp+udp gossip, 4789/udp VXLAN) away
# from the host namespace, where the system engine may hold 2377 and 7946 itself. $DGP_RUN/NAME/swarm
# records a running swarm.
readonly SWARM_SIZE=3

is_swarm() { [ -f "$DGP_RUN/$1/swarm" ]; }
swarm_nodes() {
	local i
	for ((i = 1; i <= SWARM_SIZE; i++)); do printf '%s%s\n' "$1" "$i"; done
}
# "dgphub-": no engine's tag (dgp-NAME-<hash>) can take a hub's name.
hub_netns() { printf 'dgphub-%s-%s' "$1" "$(run_hash)"; }
# 10.213.<0-255>, from a hash of $DGP_RUN and NAME. Swarms cannot reach each other whatever their
# subnets (each has its own hub), so this only keeps addresses in logs and node lists apart.
swarm_prefix() { printf '10.213.%d' "$((16#$(printf '%s:%s' "$DGP_RUN" "$1" | sha256sum | cut -c1-2)))"; }

# An EXIT trap while a swarm starts: whatever of it was started goes again.
swarm_start_failed() {
	[ -n "${SWARM_STARTING:-}" ] || return 0
	local name=$SWARM_STARTING
	SWARM_STARTING=""
	say "swarm $name did not come up; stopping what was started (swarm log: $DGP_RUN/$name/swarm.log)"
	tail -5 "$DGP_RUN/$name/swarm.log" >&2 2>/dev/null || true
	stop_swarm "$name" || true
}

cmd_swarm() {
	need_root swarm
	check_paths
	local name="" classic=0 arg
	for arg in "$@"; do
		case $arg in
		--classic) classic=1 ;;
		-*) die "swarm: unknown option $arg" ;;
		*) [ -z "$name" ] || die "swarm: one swarm name only"; name=$arg ;;
		esac
	done
	[ -n "$name" ] || die "usage: test-engine.sh swarm NAME [--classic]"
	check_name "$name"
	[ "${#name}" -le 23 ] || die "swarm name '$name': at most 23 characters (its nodes are $name<i>)"
	command -v docker >/dev/null || die "the docker CLI is needed to talk to the engines"

	# Every check before anything is made: a refused swarm must not touch what already runs.
	local node hub prefix dir=$DGP_RUN/$name log i
	hub=$(hub_netns "$name")
	prefix=$(swarm_prefix "$name")
	! is_swarm "$name" || die "swarm $name exists: run 'test-engine.sh stop $name' first"
	! netns_exists "$hub" || die "network namespace $hub exists: run 'test-engine.sh stop $name'"
	if [ -n "$(engine_pid "$name")" ] || netns_exists "$(engine_netns "$name")"; then
		die "an engine $name exists: run 'test-engine.sh stop $name' first"
	fi
	[ -z "$(mounts_under "$dir")" ] || die "mounts are left under $dir: run 'test-engine.sh stop $name'"
	for node in $(swarm_nodes "$name"); do
		! is_swarm "$node" || die "node name $node is a swarm: stop it or pick another name"
		[ -z "$(engine_pid "$node")" ] || die "engine $node is running: stop it first"
		[ -z "$(mounts_under "$DGP_RUN/$node")" ] || die "mounts are left under $DGP_RUN/$node: run 'test-engine.sh stop $node'"
		! netns_exists "$(engine_netns "$node")" || die "network namespace $(engine_netns "$node") exists: run 'test-engine.sh stop $node'"
	done
	[ -n "$(engine_dir_for "$(wanted_moby)")" ] ||
		die "no engine built from moby $(wanted_moby) under $DGP_CACHE/engine: run 'test-engine.sh build' first"

	local t0 t
	t0=$(now)
	rm -rf --one-file-system "$dir"
	mkdir -p "$dir"
	log=$dir/swarm.log
	: >"$log"
	printf 'nodes=%s\nsubnet=%s.0/24\nhub=%s\n' "$(swarm_nodes "$name" | paste -sd,)" "$prefix" "$hub" >"$dir/swarm"
	SWARM_STARTING=$name
	trap swarm_start_failed EXIT

	ip netns add "$hub"
	! same_netns_as_host "/run/netns/$hub" || die "refusing: /run/netns/$hub is the host's network namespace"
	ip -n "$hub" link set lo up
	ip -n "$hub" link add br0 type bridge
	ip -n "$hub" link set br0 up
	for ((i = 1; i <= SWARM_SIZE; i++)); do
		node=$name$i
		prepare_engine "$node" "$classic" ""
		# Both ends are created inside namespaces (ip -n, peer netns by name): nothing in the host's.
		ip -n "$hub" link add "node$i" type veth peer name eth0 netns "$(engine_netns "$node")"
		ip -n "$hub" link set "node$i" master br0 up
		ip -n "$(engine_netns "$node")" addr add "$prefix.$i/24" dev eth0
		ip -n "$(engine_netns "$node")" link set eth0 up
	done
	# Side by side: a node that fails to start cleans up after itself, the trap does the rest.
	local pids=() pid failed=0
	for node in $(swarm_nodes "$name"); do
		launch_engine "$node" "$node" &
		pids+=("$!")
	done
	for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
	[ "$failed" = 0 ] || die "swarm $name: not every node started"
	say "swarm $name: $SWARM_SIZE engines up in $(since "$t0") s"

	t=$(now)
	edocker "${name}1" swarm init --advertise-addr "$prefix.1" >>"$log" 2>&1 || die "swarm init on ${name}1 failed"
	local token
	token=$(edocker "${name}1" swarm join-token -q manager 2>>"$log") || die "no manager join token from ${name}1"
	for ((i = 2; i <= SWARM_SIZE; i++)); do
		edocker "$name$i" swarm join --token "$token" --advertise-addr "$prefix.$i" "$prefix.1:2377" >>"$log" 2>&1 ||
			die "${name}$i could not join the swarm as a manager"
	done
	local ready=0 hosts
	for ((i = 0; i < DGP_START_TIMEOUT * 10; i++)); do
		ready=$(edocker "${name}1" node ls --format '{{.Status}} {{.Availability}} {{.ManagerStatus}}' 2>>"$log" |
			grep -cE '^Ready Active (Leader|Reachable)$' || true)
		[ "$ready" = "$SWARM_SIZE" ] && break
		sleep 0.1
	done
	[ "$ready" = "$SWARM_SIZE" ] || die "swarm $name: $ready of $SWARM_SIZE managers Ready/Active after ${DGP_START_TIMEOUT}s"
	hosts=$(edocker "${name}1" node ls --format '{{.Hostname}}' | sort | paste -sd,)
	[ "$hosts" = "$(swarm_nodes "$name" | sort | paste -sd,)" ] || die "swarm $name: node hostnames are $hosts"
	edocker "${name}1" node ls --format '{{.Hostname}}  {{.Status}} {{.Availability}} {{.ManagerStatus}}  {{.EngineVersion}}' |
		sed 's/^/  /' >&2
	SWARM_STARTING=""
	trap - EXIT
	say "swarm $name: $SWARM_SIZE managers Ready/Active on $prefix.0/24 (hub netns $hub), formed in $(since "$t") s; $(since "$t0") s in all"
	for ((i = 1; i <= SWARM_SIZE; i++)); do printf 'DOCKER_HOST_%d=%s\n' "$i" "$(engine_host "$name$i")"; done
	printf 'SWARM_NODES=%s\n' "$(swarm_nodes "$name" | paste -sd,)"
}

# Stops every node, side by side (each stop_one acts only on its own node's processes, mounts,
# namespace and cgroups), then the hub. The dockerd that leaves the gossip cluster last waits 5 s for
# peers that are gone ("timed out broadcasting node event"); one at a time, each would clean up
# after the other.
stop_swarm() {
	local name=$1 hub node pid t rc=0 left=() pids=()
	t=$(now)
	hub=$(hub_netns "$name")
	for node in $(swarm_nodes "$name"); do
		stop_one "$node" &
		pids+=("$!")
	done
	for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
	if netns_exists "$hub"; then
		mapfile -t left < <(ip netns pids "$hub" 2>/dev/null | sort -un)
		[ "${#left[@]}" = 0 ] || kill_pids 5 "${left[@]}"
		ip netns delete "$hub" || true
	fi
	if netns_exists "$hub"; then
		say "swarm $name: hub namespace $hub is left behind"
		return 1
	fi
	rm -f "$DGP_RUN/$name/swarm"
	say "swarm $name: stopped in $(since "$t") s"
	return "$rc"
}

# load NAME IMAGE: the system engine's IMAGE into every node of swarm NAME (or into engine NAME).
cmd_load() {
	check_paths
	[ $# = 2 ] || die "usage: test-engine.sh load NAME IMAGE"
	local name=$1 image=$2 node t out targets=()
	check_name "$name"
	if is_swarm "$name"; then
		mapfile -t targets < <(swarm_nodes "$name")
	else
		targets=("$name")
	fi
	for node in "${targets[@]}"; do
		[ -n "$(engine_pid "$node")" ] || die "engine $node is not running"
	done
	t=$(now)
	LOAD_TAR=$(mktemp "$DGP_RUN/$name/.load.XXXXXX")
	trap 'rm -f "${LOAD_TAR:-/nonexistent}"' EXIT
	docker --host "$DGP_SYSTEM_DOCKER_HOST" save -o "$LOAD_TAR" "$image" ||
		die "docker save $image on the system engine ($DGP_SYSTEM_DOCKER_HOST) failed"
	for node in "${targets[@]}"; do
		out=$(edocker "$node" load -i "$LOAD_TAR" 2>&1) || die "docker load into $node failed: $out"
		say "  $node: ${out//$'\n'/; }"
	done
	say "load: $image ($(du -h "$LOAD_TAR" | cut -f1)) into ${targets[*]} in $(since "$t") s"
}

# link NAME I down|up: pulls node I's cable out of the hub's bridge, or plugs it back in. Inside the
# node, eth0 keeps its address and shows NO-CARRIER while the link is down.
cmd_link() {
	need_root link
	check_paths
	[ $# = 3 ] || die "usage: test-engine.sh link NAME I down|up"
	local name=$1 i=$2 state=$3 hub
	check_name "$name"
	is_swarm "$name" || die "no swarm $name under $DGP_RUN"
	if ! [[ "$i" =~ ^[0-9]+$ ]] || [ "$i" -lt 1 ] || [ "$i" -gt "$SWARM_SIZE" ]; then
		die "link: node number 1..$SWARM_SIZE, got '$i'"
	fi
	case $state in
	down | up) ;;
	*) die "link: down or up, got '$state'" ;;
	esac
	hub=$(hub_netns "$name")
	ip -n "$hub" link set "node$i" "$state"
	say "swarm $name: link of $name$i is $state ($(ip -n "$hub" -br link show "node$i" | awk '{ print $2 }'))"
}

# ------------------------------------------------------------------------------------- check-host

# Builds a FROM-scratch image holding a static Go program on the system engine (nothing can be
# pulled here) and runs it on the default bridge: that fails if docker0 was lost.
cmd_check_host() {
	local ok=1 work tag out
	if ip link show docker0 >/dev/null 2>&1; then
		say "docker0: $(ip -br link show docker0)"
	else
		say "docker0 is MISSING. The system engine cannot start containers on its default bridge. Recreate:"
		say "  ip link add docker0 type bridge && ip addr add 172.17.0.1/16 dev docker0 && ip link set docker0 up"
		ok=0
	fi
	work=$(mktemp -d)
	CHECK_WORK=$work
	trap 'rm -rf "${CHECK_WORK:-/nonexistent}"' EXIT
	cat >"$work/main.go" <<'EOF'
// Prints the container's network interfaces, so the caller sees it got one on the default bridge.
package main

import (
	"fmt"
	"net"
)

func main() {
	ifs, err := net.Interfaces()
	if err != nil {
		panic(err)
	}
	for _, i := range ifs {
		addrs, _ := i.Addrs()
		fmt.Println("check-host", i.Name, addrs)
	}
}
EOF
	printf 'module dgpcheckhost\n\ngo 1.22\n' >"$work/go.mod"
	(cd "$work" && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o hello .)
	printf 'FROM scratch\nCOPY hello /hello\nENTRYPOINT ["/hello"]\n' >"$work/Dockerfile"
	tag=dgp-check-host:$$
	# The legacy builder: the host CLI may have no buildx, and it needs nothing pulled FROM scratch.
	DOCKER_BUILDKIT=0 docker --host "$DGP_SYSTEM_DOCKER_HOST" build -q --force-rm -t "$tag" "$work" >/dev/null 2>"$work/build.err" || {
		cat "$work/build.err" >&2
		die "docker build on the system engine failed"
	}
	if out=$(docker --host "$DGP_SYSTEM_DOCKER_HOST" run --rm --network bridge "$tag" 2>&1); then
		printf '%s\n' "$out" | sed 's/^/  /' >&2
		grep -q '^check-host eth0 ' <<<"$out" || {
			say "the container has no eth0"
			ok=0
		}
	else
		say "docker run --rm on the system engine failed: $out"
		ok=0
	fi
	docker --host "$DGP_SYSTEM_DOCKER_HOST" rmi "$tag" >/dev/null 2>&1 || true
	[ "$ok" = 1 ] || die "check-host: the system engine is NOT healthy"
	say "check-host: OK (system engine $(docker --host "$DGP_SYSTEM_DOCKER_HOST" version --format '{{.Server.Version}}') ran a container on docker0)"
}

usage() { sed -n '2,/^set -euo/{ /^set -euo/d; s/^# \{0,1\}//; p; }' "$0"; }

main() {
	[ $# -ge 1 ] || {
		usage >&2
		exit 2
	}
	local cmd=$1
	shift
	case $cmd in
	build) cmd_build "$@" ;;
	start) cmd_start "$@" ;;
	stop) cmd_stop "$@" ;;
	status) cmd_status "$@" ;;
	exec) cmd_exec "$@" ;;
	swarm) cmd_swarm "$@" ;;
	load) cmd_load "$@" ;;
	link) cmd_link "$@" ;;
	check-host) cmd_check_host "$@" ;;
	-h | --help | help) usage ;;
	*)
		usage >&2
		exit 2
		;;
	esac
}

main "$@"
