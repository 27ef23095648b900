#!/usr/bin/env bash
# make test-containers: the compose stacks (docker/compose.yaml, docker/compose.redis.yaml)
# built and run for real, then tests/containers/test_compose.py against them.
#
# 1. A container engine: the one running, or dockerd (Debian's docker.io) started here with
#    the vfs storage driver (works on any file system, in a VM without overlayfs) and
#    stopped again at the end. If it cannot start, this FAILS saying why: never a skip.
# 2. Local stand-ins for the public images the compose files name (no registry is reachable
#    from CI; see standins/README.md), each built only when no image has that tag yet, so a
#    second run reuses them. almabridge's own image is built by `compose up --build` (the
#    engine's build cache makes an unchanged rebuild quick).
# 3. pytest on test_compose.py (the stacks) and test_slim.py (set-up on the slim image and
#    a minbase, in unprivileged containers); its closing line is the result.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
state=$root/.cache/containers
mkdir -p "$state"
python=${PYTHON:-python3}

say() { echo "test-containers: $*" >&2; }
fail() {
    echo "test-containers: FAILED: $*" >&2
    exit 1
}

# ---- 1. the engine -------------------------------------------------------------------
dockerd_pid=
stop_engine() {
    if [ -n "$dockerd_pid" ] && kill -0 "$dockerd_pid" 2>/dev/null; then
        say "stopping the dockerd started for the test (pid $dockerd_pid)"
        kill -TERM "$dockerd_pid"
        for _ in $(seq 60); do
            kill -0 "$dockerd_pid" 2>/dev/null || break
            sleep 0.5
        done
    fi
}
trap stop_engine EXIT

command -v docker >/dev/null || fail "no docker client: install docker.io (make test-containers does)"
if docker info >/dev/null 2>&1; then
    say "using the running container engine ($(docker info -f '{{.ServerVersion}} {{.Driver}}'))"
else
    command -v dockerd >/dev/null || fail "no container engine runs and dockerd is not installed"
    say "no container engine runs: starting dockerd --storage-driver vfs (log: $state/dockerd.log)"
    dockerd --storage-driver vfs --pidfile "$state/dockerd.pid" >"$state/dockerd.log" 2>&1 &
    dockerd_pid=$!
    for _ in $(seq 120); do
        docker info >/dev/null 2>&1 && break
        kill -0 "$dockerd_pid" 2>/dev/null || break
        sleep 0.5
    done
    if ! docker info >/dev/null 2>&1; then
        tail -n 30 "$state/dockerd.log" >&2 || true
        fail "the container engine could not start on this machine (dockerd's last lines above);" \
            "the container tests need one: they are not skipped"
    fi
fi
# The client may be newer than the engine and lack the buildx plugin: the classic builder.
docker buildx version >/dev/null 2>&1 || export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0
if docker compose version >/dev/null 2>&1; then
    export ALMABRIDGE_COMPOSE="docker compose"
elif command -v docker-compose >/dev/null; then
    export ALMABRIDGE_COMPOSE="docker-compose"
else
    fail "neither 'docker compose' nor docker-compose is installed"
fi

# ---- 2. base images ------------------------------------------------------------------
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

# Stand-ins carry a label with the hash of what they were built from; a changed recipe is
# rebuilt, a real image of that name (pulled elsewhere) is used as it is.
standin_hash() { cat "$@" | sha256sum | cut -c1-16; }
needs_build() { # tag hash
    have_image "$1" || return 0
    local label
    label=$(docker image inspect -f '{{index .Config.Labels "org.almabridge.standin"}}' "$1")
    [ -n "$label" ] && [ "$label" != "$2" ]
}

if ! have_image debian:12-slim; then
    command -v mmdebstrap >/dev/null || fail "mmdebstrap is not installed"
    say "building debian:12-slim with mmdebstrap (bookworm, minbase; once)"
    mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
    mmdebstrap --variant=minbase --quiet \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
        bookworm - "deb $mirror bookworm main" "deb $mirror bookworm-updates main" \
        "deb ${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security} bookworm-security main" |
        docker import --change 'CMD ["bash"]' - debian:12-slim >/dev/null ||
        fail "could not build debian:12-slim with mmdebstrap"
fi

# A debootstrap minbase as it comes (man pages and all, but no procps, no python3), for
# test_slim.py; the slim stand-in above drops /usr/share/man like the real debian:12-slim.
minbase=almabridge-test/minbase:bookworm
if ! have_image "$minbase"; then
    say "building $minbase with mmdebstrap (bookworm, minbase; once)"
    mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
    mmdebstrap --variant=minbase --quiet bookworm - "deb $mirror bookworm main" \
        "deb $mirror bookworm-updates main" \
        "deb ${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security} bookworm-security main" |
        docker import --change 'CMD ["bash"]' - "$minbase" >/dev/null ||
        fail "could not build $minbase with mmdebstrap"
fi

standins=$root/tests/containers/standins
libs=$(tests/kafka/fetch.sh) || fail "could not fetch the Kafka jars (tests/kafka/fetch.sh)"
kafka_tag=apache/kafka:$(basename "$(dirname "$libs")")
grep -q "image: $kafka_tag\$" docker/compose.yaml ||
    fail "docker/compose.yaml does not name $kafka_tag, the Kafka version the tests use"
hash=$(standin_hash "$standins"/kafka/* <(ls "$libs"))  # jar names carry the versions
if needs_build "$kafka_tag" "$hash"; then
    say "building the stand-in $kafka_tag (Debian's JRE + the Kafka jars)"
    ctx=$state/kafka-context
    rm -rf "$ctx"
    mkdir -p "$ctx"
    cp "$standins"/kafka/* "$ctx"/
    cp -r "$libs" "$ctx/libs"
    docker build -q --label "org.almabridge.standin=$hash" -t "$kafka_tag" "$ctx" >/dev/null ||
        fail "could not build $kafka_tag"
    rm -rf "$ctx"
fi
for pair in redis:redis:7 haproxy:haproxy:2.6; do
    dir=${pair%%:*}
    tag=${pair#*:}
    hash=$(standin_hash "$standins/$dir"/*)
    if needs_build "$tag" "$hash"; then
        say "building the stand-in $tag (Debian's $dir)"
        docker build -q --label "org.almabridge.standin=$hash" -t "$tag" "$standins/$dir" \
            >/dev/null || fail "could not build $tag"
    fi
done

# ---- 3. the tests --------------------------------------------------------------------
say "images ready; running tests/containers with $ALMABRIDGE_COMPOSE"
"$python" -m pytest -q -rfE -p no:cacheprovider tests/containers "$@"
