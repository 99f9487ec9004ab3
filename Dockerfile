# One image per service: docker build --build-arg SERVICE=orders -t switchyard-orders:0.1.0 .
#
# The Kafka client (confluent-kafka-go) links librdkafka through cgo, so the
# build stage has gcc and the runtime image has glibc (distroless/base, not
# static). The binary is built exactly like `make build` builds it
# (deploy/TestDockerfileBuildsLikeCI keeps the two identical).

# A full release, at least every go.mod's "go" line: the golang images set
# GOTOOLCHAIN=local, so an older (say, cached) 1.26.x image would refuse the
# modules rather than download a toolchain, and offline builds must not
# download one. deploy/TestDockerfileBuildsOffline checks it. (No
# "# syntax=" line either: BuildKit would pull that frontend image; its
# built-in frontend handles the cache mounts below.)
ARG GO_VERSION=1.26.8

FROM golang:${GO_VERSION}-bookworm AS build
ARG SERVICE
RUN test -n "${SERVICE}" || (echo "build with --build-arg SERVICE=<name>, a service under services/ (make images builds them all)" && false)
WORKDIR /src
# Module files first, so dependency downloads are cached across code changes. services/rules
# is the shop's rules that several services share: every image copies it,
# whether its service uses it or not, so there is one list of COPY lines.
COPY gen/go/go.mod gen/go/go.sum gen/go/
COPY platform/go.mod platform/go.sum platform/
COPY services/rules/go.mod services/rules/go.sum services/rules/
COPY services/${SERVICE}/go.mod services/${SERVICE}/go.sum services/${SERVICE}/
RUN --mount=type=cache,target=/go/pkg/mod cd services/${SERVICE} && GOWORK=off go mod download
COPY gen/go gen/go
COPY platform platform
COPY services/rules services/rules
COPY services/${SERVICE} services/${SERVICE}
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    cd services/${SERVICE} && CGO_ENABLED=1 GOWORK=off go build -trimpath -o /out/service ./cmd/${SERVICE}

FROM gcr.io/distroless/base-debian12:nonroot
COPY --from=build /out/service /usr/local/bin/service
USER 65532:65532
EXPOSE 50051 9090
ENTRYPOINT ["/usr/local/bin/service"]
