"""spark-submit entry point: the same arguments as ``sparkcurate classify``.

    spark-submit --master local-cluster[2,1,1024] jobs/classify.py --input IN --output OUT --classifier domain ...

The master and every Spark setting come from spark-submit (this script never creates its own master); the
package must be importable on the driver and the executors (installed, or shipped with --archives/--py-files).
"""

from __future__ import annotations

import sys

from sparkcurate.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] != ["classify"]:
        args = ["classify", *args]
    sys.exit(main(args))
