#!/bin/sh
# ci-clients.sh [CLIENT...]
#
# Builds the real CI clients the engine tests run the plugin through, from Go module source, and
# prints one line per client: NAME=ABSOLUTE_PATH_OF_THE_BINARY. A binary already in the cache is
# reused without touching the network, so a second call returns at once.
#
#   CLIENT  drone-runner-docker, woodpecker-cli, woodpecker-cli-3 or act (default: all four)
#
# The clients, pinned:
#   drone-runner-docker  github.com/drone-runners/drone-runner-docker@v1.8.3, package .
#                        (`drone-runner-docker exec FILE` runs one pipeline of a .drone.yml)
#   woodpecker-cli       github.com/woodpecker-ci/woodpecker@v1.0.5, package ./cmd/cli
#                        (`woodpecker-cli exec FILE` runs one workflow; the vanity path
#                        go.woodpecker-ci.org/woodpecker is not served by every proxy)
#   woodpecker-cli-3     woodpecker-cli 3.17.0, which the module proxy does not serve: decompressed
#                        from ../shared/ci-clients/woodpecker-cli-3.17.0.xz (beside this checkout,
#                        or DGP_SHARED) and checked against the sha256 its README gives
#   act                  github.com/nektos/act@v0.2.89, package . (`act` runs a GitHub Actions
#                        workflow locally on the Docker engine)
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
	woodpecker-cli-3) echo "shared 3.17.0 -" ;;
	act) echo "github.com/nektos/act v0.2.89 ." ;;
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

# from_shared NAME VERSION OUT: a client carried in ../shared/ci-clients as NAME-VERSION.xz
# (woodpecker-cli-3 is the file woodpecker-cli-3.17.0.xz), decompressed and checked.
from_shared() {
	shared="${DGP_SHARED:-$(cd "$(dirname "$0")/.." && pwd)/../shared}"
	xz_file="${shared}/ci-clients/${1%-3}-${2}.xz"
	if [ ! -f "$xz_file" ]; then
		echo "ci-clients.sh: ${xz_file} is absent: ${1} ${2} cannot be had from the module proxy" >&2
		return 1
	fi
	# shellcheck disable=SC2016 # the backquotes are the README's, matched literally
	want="$(sed -n 's/^sha256 of the decompressed binary: `\([0-9a-f]\{64\}\)`.*/\1/p' "${shared}/ci-clients/README.md")"
	mkdir -p "$bindir"
	xz -dc "$xz_file" >"${3}.tmp.$$"
	got="$(sha256sum "${3}.tmp.$$" | cut -d' ' -f1)"
	if [ -z "$want" ] || [ "$got" != "$want" ]; then
		rm -f "${3}.tmp.$$"
		echo "ci-clients.sh: ${xz_file} decompresses to sha256 ${got}, its README says '${want}'" >&2
		return 1
	fi
	chmod +x "${3}.tmp.$$"
	mv -f "${3}.tmp.$$" "$3"
	echo "${1}=${3}"
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
	if [ "$module" = shared ]; then
		from_shared "$name" "$version" "$out"
		return
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
	set -- drone-runner-docker woodpecker-cli woodpecker-cli-3 act
fi
for c in "$@"; do
	if ! client_spec "$c" >/dev/null; then
		echo "ci-clients.sh: unknown client ${c} (want drone-runner-docker, woodpecker-cli, woodpecker-cli-3 or act)" >&2
		exit 2
	fi
done
status=0
for c in "$@"; do
	build "$c" || status=1
done
exit "$status"
