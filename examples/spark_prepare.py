"""`din-export prepare` as a Spark application, for spark-submit on a cluster (YARN, Kubernetes, standalone):
the session is the one spark-submit configures; din-export writes what `prepare --engine spark` writes.

    spark-submit --master yarn --archives din_env.tar.gz#environment examples/spark_prepare.py \
        RECIPE LOG OUT [--items ITEMS] [--users USERS] [--layout reference] [--since TIME]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pyspark.sql import SparkSession

from din_export.data.rules import Sources
from din_export.data.spark import prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("log", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--items", type=Path)
    parser.add_argument("--users", type=Path)
    parser.add_argument("--layout", choices=("inline", "reference"), default="inline")
    parser.add_argument("--since")
    args = parser.parse_args()
    spark = SparkSession.builder.appName("din-export prepare").getOrCreate()
    try:
        summary = prepare(spark, args.recipe, Sources(args.log, args.items, args.users), args.out, args.layout, args.since)
    finally:
        spark.stop()
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
