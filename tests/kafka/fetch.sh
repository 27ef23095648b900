#!/bin/sh
# Fetch the jars of an Apache Kafka broker from Maven Central for the
# end-to-end tests, into <repo>/.cache/kafka/<version>/libs, and print that
# directory on stdout (everything else goes to stderr).
#
# Usage: tests/kafka/fetch.sh [version]     (default: kafka.version in pom.xml,
#                                            or $KAFKA_VERSION)
#
# Idempotent: a complete fetch leaves a stamp holding the hash of pom.xml, and
# a later run with the same pom returns at once without asking Maven. Maven's
# local repository is kept in <repo>/.cache/m2 so nothing outside the checkout
# is touched. Concurrent runs serialise on a lock file.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
pom="$here/pom.xml"
default_version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")
version=${1:-${KAFKA_VERSION:-$default_version}}
cache="$root/.cache/kafka"
dest="$cache/$version"
stamp="$dest/.complete"
want=$(sha256sum "$pom" | cut -d' ' -f1)

is_fresh() {
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -d "$dest/libs" ]
}

if is_fresh; then
    echo "$dest/libs"
    exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if is_fresh; then           # another run fetched it while we waited
    echo "$dest/libs"
    exit 0
fi

if ! command -v mvn >/dev/null 2>&1; then
    echo "cannot fetch Apache Kafka from Maven Central: mvn is not installed" >&2
    exit 1
fi

echo "fetching Apache Kafka $version from Maven Central into $dest ..." >&2
# The plugin by its coordinates: no prefix lookup, whose failure when Maven
# Central is unreachable reads as "No plugin found for prefix 'dependency'".
plugin=org.apache.maven.plugins:maven-dependency-plugin:3.8.1
tmp="$dest.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
log="$tmp/mvn.log"
if ! mvn -q -B -U -Dstyle.color=never -f "$pom" \
        -Dmaven.repo.local="$root/.cache/m2" \
        -Dkafka.version="$version" \
        -DincludeScope=runtime \
        -DoutputDirectory="$tmp/libs" \
        "$plugin:copy-dependencies" >"$log" 2>&1; then
    saved="$cache/mvn-$version.log"
    sed 's/\x1b\[[0-9;]*m//g' "$log" >"$saved"
    rm -rf "$tmp"
    reason=$(grep -m1 '\[ERROR\]' "$saved" | sed 's/^.*\[ERROR\] *//' | cut -c1-400)
    echo "cannot fetch Apache Kafka from Maven Central: ${reason:-mvn failed}" >&2
    echo "(full Maven log: $saved)" >&2
    exit 1
fi
if ! ls "$tmp/libs"/kafka_2.13-"$version".jar >/dev/null 2>&1; then
    echo "cannot fetch Apache Kafka from Maven Central: kafka_2.13-$version.jar missing after mvn" >&2
    rm -rf "$tmp"
    exit 1
fi

if [ -d "$dest/libs" ] && diff -r -q "$tmp/libs" "$dest/libs" >/dev/null 2>&1; then
    # Same jars (the pom changed only otherwise): keep the directory, which
    # brokers may be running from, and its CDS archive.
    rm -rf "$tmp"
else
    rm -rf "$dest"
    mv "$tmp" "$dest"
fi
echo "$want" >"$stamp"
echo "fetched $(ls "$dest/libs" | wc -l) jars" >&2
echo "$dest/libs"
