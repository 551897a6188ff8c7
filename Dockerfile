# drone-gated-prune image: a static binary and a CA bundle on scratch.
#
# Two ways to build the same image:
#
#   Registry build (CI publishing; needs the Go image):
#     DOCKER_BUILDKIT=1 docker build --build-arg VERSION=1.2.3 -t dronegatedprune/drone-gated-prune:1.2.3 .
#     docker buildx build --platform linux/amd64,linux/arm64 --build-arg VERSION=1.2.3 ... .
#
#   Host build (no image pull at all; see scripts/build-image.sh):
#     CGO_ENABLED=0 GOOS=linux GOARCH=amd64 go build -trimpath \
#       -ldflags "-s -w -X main.version=dev" -o dist/drone-gated-prune-linux-amd64 .
#     cp /etc/ssl/certs/ca-certificates.crt dist/
#     DOCKER_BUILDKIT=0 docker build --target host \
#       --build-arg TARGETOS=linux --build-arg TARGETARCH=amd64 -t drone-gated-prune:dev .
#
# The legacy builder runs every stage that comes before --target, so the stages that need no
# pull (meta, host) come first and the Go stages after them. The release target (the last stage,
# built when no --target is given) therefore needs BuildKit, which builds only the stages the
# target uses; the legacy builder would also run the host stage and fail without dist/.
# plugins/docker and Docker CLI 23+ with buildx use BuildKit for `docker build`.

ARG GO_IMAGE=golang:1.26.8-bookworm

# meta: labels and entrypoint shared by both final images.
FROM scratch AS meta
ARG VERSION=dev
ARG REVISION=
ARG LICENSES=NOASSERTION
LABEL org.opencontainers.image.title="drone-gated-prune" \
      org.opencontainers.image.description="Drone CI plugin that prunes stopped containers, dangling images and unused build cache only under disk pressure, with no CI run live and nothing converging" \
      org.opencontainers.image.version="${VERSION:-dev}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/drone-gated-prune/drone-gated-prune" \
      org.opencontainers.image.licenses="${LICENSES}"
ENTRYPOINT ["/bin/drone-gated-prune"]

# host: the final image from a binary and a CA bundle already in the build context (dist/).
# TARGETOS/TARGETARCH are set by BuildKit; the legacy builder needs them as --build-arg, and
# without them linux/amd64 is assumed. BINARY and CA_BUNDLE override the paths.
FROM meta AS host
ARG TARGETOS
ARG TARGETARCH
ARG BINARY=dist/drone-gated-prune-${TARGETOS:-linux}-${TARGETARCH:-amd64}
ARG CA_BUNDLE=dist/ca-certificates.crt
COPY ${CA_BUNDLE} /etc/ssl/certs/ca-certificates.crt
COPY ${BINARY} /bin/drone-gated-prune

# build: compiles for TARGETOS/TARGETARCH (BuildKit sets them; the legacy builder leaves them
# empty, which means the build container's own platform). The stage is not pinned to
# --platform=$BUILDPLATFORM because the legacy builder has no BUILDPLATFORM and refuses an empty
# platform; a multi-platform buildx build therefore runs the other architecture's stage under
# emulation. The project's pipeline builds each architecture natively instead.
FROM ${GO_IMAGE} AS build
ARG TARGETOS
ARG TARGETARCH
ARG VERSION=dev
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 GOOS="${TARGETOS:-linux}" GOARCH="${TARGETARCH:-$(go env GOARCH)}" \
    go build -trimpath -ldflags "-s -w -X main.version=${VERSION:-dev}" -o /out/drone-gated-prune .

# certs: the CA bundle of the Go image (Debian's ca-certificates package), the same image the
# build stage already pulled.
FROM ${GO_IMAGE} AS certs

# release: the published image.
FROM meta AS release
COPY --from=certs /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/drone-gated-prune /bin/drone-gated-prune
