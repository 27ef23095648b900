#!/bin/sh
# Run an Alma job through Alma's API, then block until it has ended: a pipeline step that
# needs no polling of the jobs API. The JOB_END webhook reaches almabridge, which writes it
# to its sink; `almabridge wait` reads it from there.
#
#   ALMA_APIKEY=... ./run_job_and_wait.sh M53 --sink kafka --kafka-brokers k1:9092
#   ALMA_APIKEY=... ./run_job_and_wait.sh M53 --config /etc/almabridge/almabridge.conf
#
# Arguments after the job id are almabridge wait's sink options (the daemon's: --sink,
# --kafka-brokers, --redis, --file, --route, or --config). On success the JOB_END
# CloudEvent is printed on stdout for the next step. Exit status: 0 the job completed
# successfully, 1 it failed (or ended with errors, or was cancelled), 3 it did not end
# within WAIT_TIMEOUT, 2 a configuration or connection problem.
#
# Environment: ALMA_API (default https://api-eu.hosted.exlibrisgroup.com), ALMA_APIKEY
# (never on a command line: it is handed to curl on stdin), ALMA_JOB_BODY (the job's
# parameters as JSON, default {}), WAIT_TIMEOUT (default 6h), ALMABRIDGE (the binary).
set -eu

job=${1:?usage: run_job_and_wait.sh JOB_ID [almabridge wait sink options]}
shift
api=${ALMA_API:-https://api-eu.hosted.exlibrisgroup.com}
body=${ALMA_JOB_BODY:-'{}'}

# POST /almaws/v1/conf/jobs/{job_id}?op=run; the answer's additional_info.link names the
# new instance: .../conf/jobs/M53/instances/1234567890.
answer=$(printf 'header = "Authorization: apikey %s"\n' "${ALMA_APIKEY:?set ALMA_APIKEY}" |
    curl -sS --fail-with-body -K - -X POST -H 'Accept: application/json' \
        -H 'Content-Type: application/json' --data "$body" \
        "$api/almaws/v1/conf/jobs/$job?op=run") || {
    echo "Alma did not start job $job: $answer" >&2
    exit 2
}
instance=$(printf '%s' "$answer" | sed -n 's#.*/instances/\([0-9][0-9]*\).*#\1#p')
if [ -z "$instance" ]; then
    echo "no job instance in Alma's answer: $answer" >&2
    exit 2
fi
echo "job $job started: instance $instance" >&2

rc=0
"${ALMABRIDGE:-almabridge}" wait --job-instance "$instance" --timeout "${WAIT_TIMEOUT:-6h}" "$@" ||
    rc=$?
case $rc in
0) echo "job $job instance $instance completed successfully" >&2 ;;
1) echo "job $job instance $instance did not succeed" >&2 ;;
3) echo "job $job instance $instance: no end within ${WAIT_TIMEOUT:-6h}" >&2 ;;
*) echo "cannot wait for job $job instance $instance" >&2 ;;
esac
exit $rc
