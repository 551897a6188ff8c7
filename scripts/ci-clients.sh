#!/bin/sh
# ci-clients.sh [CLIENT...]
#
# Builds the real CI clients the engine tests run the plugin through, from Go module source, and
# prints one line per client: NAME=ABSOLUTE_PATH_OF_THE_BINARY. A binary already in the cache is
# reused without touching the network, so a second call returns at once.
#
#   CLIENT  drone-runner-docker or woodpecker-cli (default: both)
#
# The clients, pinned:
#   drone-runner-docker  github.com/drone-runners/drone-runner-docker@v1.8.3, package .
#                        (`drone-runner-docker exec FILE` runs one pipeline of a .drone.yml)
#   woodpecker-cli       github.com/woodpecker-ci/woodpecker@v1.0.5, package ./cmd/cli
#                        (`woodpecker-cli exec FILE` runs one workflow; the vanity path
#                        go.woodpecker-ci.org/woodpecker is not served by every proxy)
#
# Each is built as the MAIN module: its go.mod has replace directives (drone-runner-docker
# replaces github.com/docker/docker), and Go ignores the replace directives of a dependency, so
# `go install MODULE@VERSION` cannot build it. The module directory is copied out of the module
# cache (`go mod download -json`), made writable, and built there with GOFLAGS=-mod=mod (its
# go.sum may lack entries the current toolchain wants). The binary is written under a temporary
# name and renamed into place, so concurrent calls never see half a file.
#
# Environment:
#   DGP_CACHE  cache directory (default ${HOME}/.cache/drone-gated-prune); binaries go to
#              ${DGP_CACHE}/bin/<client>-<version>
#   GOPROXY, GOMODCACHE, ...  as for any go command (only the Go module proxy is needed)
#
# Exit status: 0 when every requested binary is present; 1 when a download or build failed
# (the go command's output is on stderr); 2 for an unknown client name.
set -eu

cache="${DGP_CACHE:-${HOME}/.cache/drone-gated-prune}"
bindir="${cache}/bin"

# client NAME -> "MODULE VERSION PACKAGE"
client_spec() {
	case "$1" in
	drone-runner-docker) echo "github.com/drone-runners/drone-runner-docker v1.8.3 ." ;;
	woodpecker-cli) echo "github.com/woodpecker-ci/woodpecker v1.0.5 ./cmd/cli" ;;
	*) return 1 ;;
	esac
}

# module_dir MODULE@VERSION: download into the module cache and print the extracted directory.
module_dir() {
	json="$(go mod download -json "$1")" || {
		printf '%s\n' "$json" >&2
		return 1
	}
	printf '%s\n' "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p'
}

build() {
	name="$1"
	read -r module version pkg <<EOF
$(client_spec "$name")
EOF
	out="${bindir}/${name}-${version}"
	if [ -x "$out" ]; then
		echo "${name}=${out}"
		return 0
	fi
	echo "ci-clients.sh: building ${name} ${version} from ${module}@${version}" >&2
	mkdir -p "$bindir"
	work="$(mktemp -d "${TMPDIR:-/tmp}/dgp-ci-clients.XXXXXX")"
	# Outside any module, so the download cannot touch a go.mod.
	dir="$(cd "$work" && module_dir "${module}@${version}")" || dir=""
	if [ -z "$dir" ] || [ ! -d "$dir" ]; then
		rm -rf "$work"
		echo "ci-clients.sh: go mod download ${module}@${version} gave no directory" >&2
		return 1
	fi
	# The copy is a throwaway main module: the module cache is read-only and must stay untouched.
	cp -R "$dir" "${work}/src"
	chmod -R u+w "${work}/src"
	ldflags="-s -w"
	if [ "$name" = woodpecker-cli ]; then
		# What `woodpecker-cli --version` prints (it says "dev" otherwise).
		ldflags="${ldflags} -X go.woodpecker-ci.org/woodpecker/version.Version=${version#v}"
	fi
	if ! (cd "${work}/src" && CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false" \
		go build -trimpath -ldflags "$ldflags" -o "${out}.tmp.$$" "$pkg" >&2); then
		rm -rf "$work" "${out}.tmp.$$"
		echo "ci-clients.sh: building ${name} ${version} failed" >&2
		return 1
	fi
	mv -f "${out}.tmp.$$" "$out"
	rm -rf "$work"
	echo "${name}=${out}"
}

if [ "$#" -eq 0 ]; then
	set -- drone-runner-docker woodpecker-cli
fi
for c in "$@"; do
	if ! client_spec "$c" >/dev/null; then
		echo "ci-clients.sh: unknown client ${c} (want drone-runner-docker or woodpecker-cli)" >&2
		exit 2
	fi
done
status=0
for c in "$@"; do
	build "$c" || status=1
done
exit "$status"
