#!/bin/sh
# percall.sh: what one webhook costs the daemon under load, for comparing builds.
#
#   bench/percall.sh [-c CONNS] [-d SECONDS] [-r ROUNDS] [-t THREADS] [-a DAEMON_ARGS] BINARY...
#
# For each round, each BINARY in turn (alternating, so that a drift of the shared machine
# falls on all of them) runs with the file sink (fsync on; DAEMON_ARGS are added, e.g.
# -a --file-fsync=false) on a free port while wrk sends
# signed POSTs of tests/fixtures/alma/loan_created.json at CONNS connections for SECONDS.
# Prints per run: req/s, the daemon's CPU (user + system) per webhook in microseconds, and
# its system calls per webhook (all of them, and by name for the main ones), counted with
# `perf stat` on the syscall tracepoints during the middle of the run, over the events the
# file gained meanwhile (needs root, perf, wrk). Then the median CPU per webhook of each binary over the rounds.
#
# Example, before and after a change:
#   git worktree add /tmp/before <rev> && make -C /tmp/before build/almabridge
#   make && bench/percall.sh -r 6 /tmp/before/build/almabridge build/almabridge
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
conns=50 secs=4 rounds=3 threads=2 extra=
while getopts c:d:r:t:a: o; do
    case $o in
    c) conns=$OPTARG ;; d) secs=$OPTARG ;; r) rounds=$OPTARG ;; t) threads=$OPTARG ;;
    a) extra=$OPTARG ;;
    *) exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || { echo "usage: $0 [-c CONNS] [-d SECONDS] [-r ROUNDS] [-t THREADS] [-a ARGS] BINARY..." >&2; exit 2; }
body=$root/tests/fixtures/alma/loan_created.json
sig=$(openssl dgst -sha256 -hmac bench -binary "$body" | openssl base64 -A)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
calls="read readv write writev sendmsg epoll_wait epoll_ctl ioctl futex fdatasync newfstatat"
events="raw_syscalls:sys_enter"
for s in $calls; do events="$events,syscalls:sys_enter_$s"; done
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

for r in $(seq "$rounds"); do
    for bin in "$@"; do
        rm -rf "$tmp/data" && mkdir -p "$tmp/data"
        ALMABRIDGE_SECRET=bench "$bin" --listen "127.0.0.1:$port" --drain-grace 0 \
            --threads "$threads" --file "$tmp/data/events.jsonl" $extra >"$tmp/daemon.log" 2>&1 &
        pid=$!
        for _ in $(seq 50); do
            curl -s -o /dev/null "http://127.0.0.1:$port/healthz" && break
            sleep 0.1
        done
        cpu0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
        BENCH_BODY=$body BENCH_SIG=$sig wrk -t 2 -c "$conns" -d "${secs}s" \
            -s "$here/post.lua" "http://127.0.0.1:$port/webhook" >"$tmp/wrk.out" &
        wrk_pid=$!
        sleep 1
        # the event counts are taken by the command perf times, so both windows are one
        perf stat -x, -e "$events" -p "$pid" -o "$tmp/perf.txt" -- sh -c \
            "wc -l <'$tmp/data/events.jsonl' >'$tmp/n0'; sleep $((secs - 2)); \
             wc -l <'$tmp/data/events.jsonl' >'$tmp/n1'"
        req0=$(cat "$tmp/n0") req1=$(cat "$tmp/n1")
        wait "$wrk_pid"
        cpu1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
        kill "$pid" && wait "$pid" || true
        n=$(sed -n 's/.*"requests":\([0-9]*\).*/\1/p' "$tmp/wrk.out")
        rps=$(awk '/Requests\/sec/ {print $2}' "$tmp/wrk.out")
        tck=$(getconf CLK_TCK)
        cpu=$(awk -v a="$cpu0" -v b="$cpu1" -v n="$n" -v t="$tck" 'BEGIN {printf "%.2f", (b - a) / t * 1e6 / n}')
        per=$(awk -F, -v n=$((req1 - req0)) 'NF > 2 && n > 0 {
                  name = $3; sub(/.*sys_enter_?/, "", name); if (name == "") name = "all";
                  printf "%s %.2f  ", name, $1 / n }' "$tmp/perf.txt")
        echo "round $r $bin: $rps req/s, cpu_us_per_webhook $cpu, syscalls per webhook: $per"
        echo "$bin $cpu" >>"$tmp/cpu"
    done
done
echo "median CPU per webhook (µs):"
for bin in "$@"; do
    grep -F "$bin " "$tmp/cpu" | awk '{print $2}' | sort -n |
        awk -v b="$bin" '{v[NR] = $1} END {print "  " b ": " v[int((NR + 1) / 2)]}'
done
