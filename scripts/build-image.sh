#!/bin/sh
# build-image.sh TAG [VERSION]
#
# Builds the drone-gated-prune image without pulling any image: the binary is compiled on this
# machine for the Docker daemon's architecture, the CA bundle is copied from this machine, and
# the legacy builder assembles the Dockerfile's `host` target (FROM scratch) from dist/.
#
#   TAG      image tag to create (default drone-gated-prune:dev)
#   VERSION  stamped into the binary (main.version) and the image label
#            (default: `git describe --tags --always --dirty`, else "dev")
#
# Environment:
#   CA_BUNDLE  CA bundle to copy (default: the first of the usual system paths that exists)
#   GOARCH     architecture to build for (default: the Docker daemon's, else Go's host arch)
set -eu

cd "$(dirname "$0")/.."

tag="${1:-drone-gated-prune:dev}"
version="${2:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}"
revision="$(git rev-parse --short HEAD 2>/dev/null || true)"

goos=linux
goarch="${GOARCH:-$(docker version --format '{{.Server.Arch}}' 2>/dev/null || go env GOHOSTARCH)}"

ca="${CA_BUNDLE:-}"
if [ -z "$ca" ]; then
	for f in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt /etc/ssl/cert.pem; do
		if [ -f "$f" ]; then
			ca="$f"
			break
		fi
	done
fi
if [ -z "$ca" ] || [ ! -f "$ca" ]; then
	echo "build-image.sh: no CA bundle found; set CA_BUNDLE to one" >&2
	exit 1
fi

mkdir -p dist
binary="dist/drone-gated-prune-${goos}-${goarch}"
echo "building ${binary} (version ${version})"
CGO_ENABLED=0 GOOS="$goos" GOARCH="$goarch" \
	go build -trimpath -ldflags "-s -w -X main.version=${version}" -o "$binary" .
cp "$ca" dist/ca-certificates.crt

echo "building image ${tag} (target host, legacy builder)"
DOCKER_BUILDKIT=0 docker build --target host \
	--build-arg TARGETOS="$goos" \
	--build-arg TARGETARCH="$goarch" \
	--build-arg VERSION="$version" \
	--build-arg REVISION="$revision" \
	-t "$tag" .
