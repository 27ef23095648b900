#!/bin/sh
# Upgrade the almabridge replicas of a compose stack one at a time, without refusing a
# webhook (docs/OPERATIONS.md, "Upgrading"). From the repository's root:
#
#   git pull                      # or check out the version to run
#   docker/upgrade.sh             # docker/compose.yaml
#   docker/upgrade.sh -f docker/compose.redis.yaml -p myproject
#
# 1. builds the new image once (`compose build`), while the old replicas keep serving;
# 2. for each service almabridge-N in turn: waits until HAProxy sees every replica UP, then
#    `compose up -d --no-deps --force-recreate almabridge-N`: Docker sends SIGTERM, the
#    replica's /readyz turns 503 at once while it keeps serving for --drain-grace, HAProxy
#    takes it out within ~2 s, it answers what is in flight and exits; the new container
#    starts on the same named volume (its spool); the script waits until its own
#    `almabridge --probe` succeeds and HAProxy sees it UP again before the next one.
#
# Never `docker compose up -d --force-recreate` for the whole stack: it restarts every
# replica at once (about 11 s with nothing behind HAProxy, every webhook refused).
#
# Options: -f FILE (default docker/compose.yaml), -p PROJECT (compose's -p), -t SECONDS to
# wait for each replica (default 180). The environment: ALMABRIDGE_COMPOSE (the compose
# command, default `docker compose`, else docker-compose), ALMABRIDGE_STATS_PORT (HAProxy's
# stats on the host, default 8404). Exit 0 when every replica was replaced and is UP,
# 1 otherwise (the replicas not yet replaced keep running the old version).
set -eu

file=docker/compose.yaml
project=
timeout=180
while getopts f:p:t: opt; do
    case $opt in
    f) file=$OPTARG ;;
    p) project=$OPTARG ;;
    t) timeout=$OPTARG ;;
    *) echo "usage: $0 [-f compose-file] [-p project] [-t seconds]" >&2; exit 2 ;;
    esac
done

if [ -n "${ALMABRIDGE_COMPOSE:-}" ]; then
    compose=$ALMABRIDGE_COMPOSE
elif docker compose version >/dev/null 2>&1; then
    compose="docker compose"
else
    compose=docker-compose
fi
# shellcheck disable=SC2086 # $compose is a command with arguments
c() { $compose ${project:+-p "$project"} -f "$file" "$@"; }
stats="http://127.0.0.1:${ALMABRIDGE_STATS_PORT:-8404}/stats;csv"
say() { echo "upgrade: $*" >&2; }

services=$(c config --services | grep -E '^almabridge-[0-9]+$' | sort -V)
n=$(echo "$services" | grep -c .)
[ "$n" -ge 2 ] || { say "fewer than two almabridge-N services in $file: nothing can take over"; exit 1; }

# replicas UP in HAProxy's backend `almabridge`, from its CSV stats
up_count() {
    curl -fsS --max-time 5 "$stats" 2>/dev/null |
        awk -F, '$1 == "almabridge" && $2 != "BACKEND" && $18 == "UP" { n++ } END { print n + 0 }'
}
# wait until `cond` succeeds, at most $timeout seconds
wait_for() { # what cond...
    what=$1
    shift
    i=0
    while ! "$@"; do
        i=$((i + 1))
        if [ "$i" -gt "$((timeout * 2))" ]; then
            say "timed out after ${timeout}s waiting for $what"
            exit 1
        fi
        sleep 0.5
    done
}
all_up() { [ "$(up_count)" -ge "$n" ]; }
probe_ok() { c exec -T "$1" almabridge --probe >/dev/null 2>&1; }

say "building the new image"
c build $services >&2
for s in $services; do
    wait_for "HAProxy to see all $n replicas UP before replacing $s" all_up
    say "replacing $s (drain, stop, start on its volume)"
    c up -d --no-deps --force-recreate "$s" >&2
    wait_for "$s to answer its readiness probe" probe_ok "$s"
    wait_for "HAProxy to see $s UP again" all_up
    say "$s is up"
done
say "done: $n replicas replaced, all UP"
