#!/usr/bin/env bash
# Fetch Delta Lake's jars (delta-spark and delta-storage) from Maven Central into DEST and print them as the
# comma-separated list that spark.jars takes:
#
#   export SPARKCURATE_DELTA_JARS=$(scripts/fetch-jars.sh .ci-jars)
#
# The versions follow the Python environment: Delta from the installed delta-spark package (its pip metadata
# pins the pyspark it supports), Scala from pyspark's own scala-library jar. PYTHON names the interpreter
# (default: python). Uses Maven (dependency:copy, its local repository inside DEST) where `mvn` is installed,
# else downloads the two jars directly and checks them against Maven Central's SHA-1 files.
set -euo pipefail
dest=${1:?usage: scripts/fetch-jars.sh DEST}
python=${PYTHON:-python}
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)

delta=${DELTA_VERSION:-$("$python" -c 'import importlib.metadata as m; print(m.version("delta-spark"))')}
scala=$("$python" - <<'PY'
import pathlib, re, pyspark
jars = pathlib.Path(pyspark.__file__).parent / "jars"
found = [re.match(r"scala-library-(\d+\.\d+)\.", p.name) for p in jars.glob("scala-library-*.jar")]
print(next(m.group(1) for m in found if m))
PY
)
artifacts=("io.delta:delta-spark_${scala}:${delta}" "io.delta:delta-storage:${delta}")
central=https://repo1.maven.org/maven2

for gav in "${artifacts[@]}"; do
    IFS=: read -r group artifact version <<<"$gav"
    jar="$dest/${artifact}-${version}.jar"
    [ -s "$jar" ] && continue
    if command -v mvn >/dev/null 2>&1; then
        mvn -q -B -Dstyle.color=never -Dmaven.repo.local="$dest/.m2" \
            org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
            -Dartifact="$gav" -DoutputDirectory="$dest" -Dmdep.overWriteIfNewer=true >&2
    else
        url="$central/${group//.//}/$artifact/$version/$artifact-$version.jar"
        curl -fsSL -o "$jar.part" "$url"
        want=$(curl -fsSL "$url.sha1" | cut -c1-40)
        got=$(sha1sum "$jar.part" | cut -c1-40)
        if [ "$want" != "$got" ]; then
            echo "checksum mismatch for $url: got $got, Maven Central says $want" >&2
            exit 1
        fi
        mv "$jar.part" "$jar"
    fi
done
echo "Delta $delta (Scala $scala) jars in $dest" >&2
printf '%s\n' "$(IFS=,; for gav in "${artifacts[@]}"; do IFS=: read -r _ a v <<<"$gav"; printf '%s,' "$dest/$a-$v.jar"; done | sed 's/,$//')"
