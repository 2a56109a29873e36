#!/usr/bin/env bash
# Fetch the pinned RAPIDS Accelerator for Apache Spark jar from Maven Central with Maven, check it against the
# checksums pinned here, and print its path (the only line on stdout; progress goes to stderr).
#
#   scripts/fetch-rapids-jar.sh                 # -> .cache/rapids/rapids-4-spark_2.13-26.08.1-cuda12.jar
#   SPARKCURATE_RAPIDS_CACHE=/data/jars scripts/fetch-rapids-jar.sh
#   spark-submit --jars "$(scripts/fetch-rapids-jar.sh)" --conf spark.plugins=com.nvidia.spark.SQLPlugin ...
#
# Which versions go together (checked by listing the jar's Spark shims, spark350 ... spark420):
#   rapids-4-spark_2.13 26.08.1 runs on Spark 3.5.0-3.5.9 built for Scala 2.13, 4.0.0-4.0.4, 4.1.1-4.1.3 and
#   4.2.0. pip's pyspark 4.x is Scala 2.13, so pip pyspark 4.0.0-4.0.4, 4.1.1-4.1.3 or 4.2.0 work with it;
#   pip's pyspark 3.5 is Scala 2.12 and pyspark 4.3 (and 4.1.0, 4.1.4, 4.2.1) has no shim: Spark then refuses
#   to start the plugin. The cuda12 jar (the same file as the jar without a classifier) needs an NVIDIA driver
#   for CUDA 12; it runs without any GPU only with spark.rapids.sql.mode=explainOnly.
#   Maven Central holds no 26.x build for Scala 2.12; clusters on Scala 2.12 (Databricks up to 15.x, pip
#   pyspark 3.5) need a _2.12 release, which is not pinned here.
#
# The jar is about 1 GB: it is kept in the cache directory (git-ignored) and fetched again only when it is
# missing or does not match the pinned SHA-256. Maven checks the jar against the .sha1 published next to it
# (--strict-checksums); this script checks that the published SHA-1 is the one pinned below, and the jar
# against the pinned SHA-256, which Maven Central does not publish (computed from the jar fetched on
# 2026-12-05). A changed file fails here, loudly, and is not used.
set -euo pipefail

GROUP=com.nvidia
ARTIFACT=rapids-4-spark_2.13
VERSION=26.08.1
CLASSIFIER=cuda12
SHA1=81c1497234f0c6c047ad74dd4ec3cd4fe274944a
SHA256=d5224e1c07bc881e93829ea341b33a9a7896d1ced7783262b62d027a1e48b1f9

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${SPARKCURATE_RAPIDS_CACHE:-$repo/.cache/rapids}
name="$ARTIFACT-$VERSION-$CLASSIFIER.jar"
jar="$cache/$name"

say() { echo "fetch-rapids-jar: $*" >&2; }

matches() {  # $1: file; true when it has the pinned SHA-256 (one pass over 1 GB: seconds to a minute)
    [ -f "$1" ] || return 1
    local sha256
    sha256=$(sha256sum "$1" | cut -d' ' -f1)
    if [ "$sha256" != "$SHA256" ]; then
        say "$1: SHA-256 is $sha256, not the pinned $SHA256"
        return 1
    fi
}

if [ -f "$jar" ] && matches "$jar"; then
    say "$name already in $cache (SHA-256 matches)"
    echo "$jar"
    exit 0
fi

command -v mvn >/dev/null 2>&1 || { say "Maven (mvn) is needed to fetch $name: install it (apt-get install maven)"; exit 1; }
mkdir -p "$cache"
rm -f "$jar"
# A Maven repository of its own inside the cache: the jar is stored once, and ~/.m2 is left alone.
m2="$cache/m2"
say "fetching $GROUP:$ARTIFACT:$VERSION:jar:$CLASSIFIER (about 1 GB) from Maven Central"
mvn -B -q -Dstyle.color=never --strict-checksums -Dmaven.repo.local="$m2" dependency:get \
    -Dartifact="$GROUP:$ARTIFACT:$VERSION:jar:$CLASSIFIER" -Dtransitive=false >&2
fetched="$m2/${GROUP//.//}/$ARTIFACT/$VERSION/$name"
published=$(tr -d ' \n' < "$fetched.sha1" | cut -c1-40)
if [ "$published" != "$SHA1" ]; then
    say "Maven Central's $name.sha1 is $published, not the pinned $SHA1: not using it"
    exit 1
fi
if ! matches "$fetched"; then
    rm -f "$fetched"
    exit 1
fi
# A hard link where the file system allows it (no second GB), else a copy.
ln -f "$fetched" "$jar" 2>/dev/null || cp "$fetched" "$jar"
say "$name checked (Maven: published SHA-1; here: pinned SHA-1 and SHA-256) and stored in $cache"
echo "$jar"
