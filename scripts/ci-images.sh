#!/bin/sh
# ci-images.sh [IMAGE...]
#
# Builds, on the local Docker engine and without pulling any image, the step images that the
# pipelines of .drone.yml run here need, under exactly the tags .drone.yml pins, so that
# `drone-runner-docker exec` finds them and does not pull (a pinned tag present locally is not
# pulled; an untagged or :latest image always is, and nothing can be pulled here). Prints one line
# per image: TAG=present (reused) or TAG=built.
#
#   IMAGE  golang:1.26.8-bookworm or docker:28.2.2-cli (default: both)
#
# What they are made of (stand-ins with the layout of the images of those names, not copies):
#   golang:1.26.8-bookworm  a Debian bookworm root filesystem made by debootstrap (variant minbase,
#                           plus ca-certificates, git and netbase) with this machine's Go toolchain
#                           at /usr/local/go and this machine's CA bundle (so that the go command
#                           trusts what this machine trusts on its way to the Go module proxy);
#                           GOPATH=/go, GOTOOLCHAIN=local, PATH as in the Go image. No C compiler:
#                           the go command then builds with cgo off.
#   docker:28.2.2-cli       the same root filesystem with this machine's docker CLI at
#                           /usr/local/bin/docker (the pipeline's docker-cli step copies it from
#                           there into a volume the test step shares).
# The versions in the tags are checked against this machine's (`go version`, the docker client's
# version) and against .drone.yml: a mismatch is an error, never a silently different image.
#
# Cached and idempotent:
#   * the root filesystem is debootstrap'd once (about a minute, from Debian's mirror) and kept as
#     ${DGP_CACHE}/rootfs/debian-bookworm-<recipe>.tar.gz; later calls reuse the tarball.
#   * it is imported once as the local base image dgp-ci-base:bookworm-<recipe>.
#   * each step image carries the label dgp.ci-image.recipe (a hash of the base, the Dockerfile and
#     the payload's version); an image of that tag with that label is reused untouched, one with
#     another recipe is rebuilt. An image under the tag that this script did not make (the real
#     one, pulled on a host that can pull) is used as it is and never replaced.
# The images are tagged, so the plugin never prunes them; `docker system prune -a` does, and the
# next call builds them again from the cached tarball (seconds).
#
# Needs: root (debootstrap, and extracting the tarball keeps owners), the docker CLI and engine;
# debootstrap is installed with apt-get if it is missing.
#
# Environment:
#   DGP_CACHE          cache directory (default ${HOME}/.cache/drone-gated-prune)
#   DGP_DEBIAN_MIRROR  Debian mirror for debootstrap (default http://deb.debian.org/debian)
#   DOCKER_HOST, ...   as for any docker command
#
# Exit status: 0 when every requested image is present; 1 when one could not be made (the reason
# is on stderr); 2 for an unknown image name.
set -eu

cd "$(dirname "$0")/.."

cache="${DGP_CACHE:-${HOME}/.cache/drone-gated-prune}"
mirror="${DGP_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

# The pinned tags (.drone.yml must name exactly these) and the versions they stand for.
go_version=1.26.8
docker_version=28.2.2
golang_tag="golang:${go_version}-bookworm"
docker_tag="docker:${docker_version}-cli"

suite=bookworm
packages="ca-certificates,git,netbase"
log() { echo "ci-images.sh: $*" >&2; }

sha() { sha256sum | cut -c1-12; }

# The root filesystem recipe names the tarball and the base image.
rootfs_recipe="$(printf 'debootstrap --variant=minbase --include=%s %s\n' "$packages" "$suite" | sha)"
rootfs="${cache}/rootfs/debian-${suite}-${rootfs_recipe}.tar.gz"
base_tag="dgp-ci-base:${suite}-${rootfs_recipe}"

# make_rootfs: debootstrap into a scratch directory, trim it, pack it, and move the tarball into
# place. A failed or interrupted run leaves no tarball (and unmounts whatever debootstrap mounted).
make_rootfs() {
	[ -f "$rootfs" ] && return 0
	if [ "$(id -u)" != 0 ]; then
		log "debootstrap needs root; run as root once to make ${rootfs}"
		return 1
	fi
	if ! command -v debootstrap >/dev/null 2>&1; then
		log "installing debootstrap (apt-get)"
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; } >&2 || {
			log "apt-get could not install debootstrap"
			return 1
		}
	fi
	mkdir -p "${cache}/rootfs"
	work="$(mktemp -d "${cache}/rootfs/work.XXXXXX")"
	log "debootstrap ${suite} (minbase + ${packages}) from ${mirror} into ${work}"
	start=$(date +%s)
	if ! debootstrap --variant=minbase --include="$packages" "$suite" "${work}/root" "$mirror" >"${work}.log" 2>&1; then
		tail -n 20 "${work}.log" >&2
		drop_work "$work"
		log "debootstrap failed (log above)"
		return 1
	fi
	rm -rf "${work}/root/var/cache/apt/archives/"*.deb "${work}/root/var/lib/apt/lists/"* "${work}/root/var/log/"*.log
	tar -C "${work}/root" --numeric-owner -czf "${rootfs}.tmp.$$" .
	mv -f "${rootfs}.tmp.$$" "$rootfs"
	drop_work "$work"
	log "root filesystem ${rootfs} ($(du -h "$rootfs" | cut -f1)) in $(($(date +%s) - start))s"
}

# drop_work DIR: unmount anything left mounted under DIR (debootstrap mounts /proc and /sys into
# the target while it works), then remove DIR without crossing into another filesystem.
drop_work() {
	awk -v d="$1/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
		umount -l "$m" || true
	done
	rm -rf --one-file-system "$1" "$1.log"
}

# label TAG: the image's recipe label, empty when the tag is absent.
label() {
	docker image inspect --format '{{ index .Config.Labels "dgp.ci-image.recipe" }}' "$1" 2>/dev/null || true
}

ensure_base() {
	if docker image inspect "$base_tag" >/dev/null 2>&1; then
		return 0
	fi
	make_rootfs || return 1
	log "importing ${rootfs} as ${base_tag}"
	docker import --change 'CMD ["bash"]' "$rootfs" "$base_tag" >/dev/null
}

# build TAG RECIPE CTX DIR NAME: build TAG from the context directory CTX (its Dockerfile and
# small files; removed afterwards) plus DIR/NAME, streamed as one tar so that nothing large is
# copied on disk, with the legacy builder (it resolves FROM locally and never pulls an image that
# is present). The Dockerfiles have no RUN: nothing runs in a container, so an engine without a
# usable default network builds them too.
#
# Under TAG, an image this script made (it has the recipe label) is reused when its recipe is
# RECIPE and replaced otherwise; an image it did not make (no label: pulled from a registry, or
# built by someone else) is left as it is, since that is the image the tag names on this host.
build() {
	tag="$1" recipe="$2" ctx="$3" dir="$4" name="$5"
	have_label="$(label "$tag")"
	if [ "$have_label" = "$recipe" ]; then
		rm -rf "$ctx"
		echo "${tag}=present"
		return 0
	fi
	if docker image inspect "$tag" >/dev/null 2>&1 && [ -z "$have_label" ]; then
		rm -rf "$ctx"
		log "${tag} is on the engine and was not made by this script: using it as it is"
		echo "${tag}=present"
		return 0
	fi
	if ! ensure_base; then
		rm -rf "$ctx"
		return 1
	fi
	old="$(docker image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
	start=$(date +%s)
	if ! tar -cf - -C "$ctx" . -C "$dir" "$name" |
		DOCKER_BUILDKIT=0 docker build --force-rm -t "$tag" - >"${ctx}.log" 2>&1; then
		tail -n 20 "${ctx}.log" >&2
		rm -rf "$ctx" "${ctx}.log"
		log "building ${tag} failed (log above)"
		return 1
	fi
	rm -rf "$ctx" "${ctx}.log"
	# The image this one replaces is left untagged: remove it unless something still uses it.
	if [ -n "$old" ] && [ "$old" != "$(docker image inspect --format '{{.Id}}' "$tag")" ]; then
		docker image rm "$old" >/dev/null 2>&1 || true
	fi
	log "built ${tag} in $(($(date +%s) - start))s"
	echo "${tag}=built"
}

# pinned TAG: .drone.yml names TAG as a step image.
pinned() {
	grep -Eq "^[[:space:]]*image:[[:space:]]*$(printf '%s' "$1" | sed 's/[.]/[.]/g')[[:space:]]*\$" .drone.yml
}

golang_image() {
	have="$(go env GOVERSION 2>/dev/null || true)"
	if [ "$have" != "go${go_version}" ]; then
		log "${golang_tag} is made from this machine's Go, which is ${have:-missing}, not go${go_version}"
		return 1
	fi
	goroot="$(go env GOROOT)"
	ca=""
	for f in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt /etc/ssl/cert.pem; do
		if [ -f "$f" ]; then
			ca="$f"
			break
		fi
	done
	if [ -z "$ca" ]; then
		log "no CA bundle on this machine for ${golang_tag}"
		return 1
	fi
	ctx="$(mktemp -d)"
	cp "$ca" "${ctx}/ca-certificates.crt"
	# GOPATH as the Go image lays it out: /go/src and /go/bin, open to every user.
	mkdir -p "${ctx}/gopath/src" "${ctx}/gopath/bin"
	chmod -R 1777 "${ctx}/gopath"
	dockerfile="FROM ${base_tag}
COPY $(basename "$goroot") /usr/local/go
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY gopath /go
ENV GOLANG_VERSION=${go_version} GOTOOLCHAIN=local GOPATH=/go
ENV PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
WORKDIR /go
"
	recipe="$(printf '%s\n%s\n%s\n%s\n' "$rootfs_recipe" "$dockerfile" "$have" "$(sha256sum <"$ca")" | sha)"
	printf '%sLABEL dgp.ci-image.recipe=%s\n' "$dockerfile" "$recipe" >"${ctx}/Dockerfile"
	build "$golang_tag" "$recipe" "$ctx" "$(dirname "$goroot")" "$(basename "$goroot")"
}

docker_image() {
	have="$(docker version --format '{{.Client.Version}}' 2>/dev/null || true)"
	if [ "$have" != "$docker_version" ]; then
		log "${docker_tag} is made from this machine's docker CLI, which is ${have:-missing}, not ${docker_version}"
		return 1
	fi
	bin="$(readlink -f "$(command -v docker)")"
	ctx="$(mktemp -d)"
	dockerfile="FROM ${base_tag}
COPY $(basename "$bin") /usr/local/bin/docker
"
	recipe="$(printf '%s\n%s\n%s\n' "$rootfs_recipe" "$dockerfile" "$(sha256sum <"$bin")" | sha)"
	printf '%sLABEL dgp.ci-image.recipe=%s\n' "$dockerfile" "$recipe" >"${ctx}/Dockerfile"
	build "$docker_tag" "$recipe" "$ctx" "$(dirname "$bin")" "$(basename "$bin")"
}

if [ "$#" -eq 0 ]; then
	set -- "$golang_tag" "$docker_tag"
fi
for i in "$@"; do
	case "$i" in
	"$golang_tag" | "$docker_tag") ;;
	*)
		log "unknown image ${i} (want ${golang_tag} or ${docker_tag})"
		exit 2
		;;
	esac
done
status=0
for i in "$@"; do
	if ! pinned "$i"; then
		log ".drone.yml names no step image ${i}: update this script and .drone.yml together"
		status=1
		continue
	fi
	case "$i" in
	"$golang_tag") golang_image || status=1 ;;
	"$docker_tag") docker_image || status=1 ;;
	esac
done
exit "$status"
