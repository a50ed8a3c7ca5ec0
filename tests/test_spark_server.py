"""The Spark Connect test server answers SQL, keeps a table in its Hive metastore, and
listens only on loopback."""

from __future__ import annotations

import pytest

from .spark_server import SparkServer

pytestmark = pytest.mark.spark


def test_the_server_answers_and_keeps_a_parquet_table(spark_server: SparkServer) -> None:
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.remote(spark_server.url).getOrCreate()
    try:
        assert spark_server.host == "127.0.0.1"
        assert spark.sql("select :x + 1 as y", args={"x": 41}).collect()[0]["y"] == 42
        assert spark.conf.get("spark.sql.catalogImplementation") == "hive"
        spark.sql("create database if not exists probe")
        spark.sql("create table probe.t (k int, d date) using parquet partitioned by (d)")
        spark.sql("insert into probe.t values (1, date'2026-01-01'), (2, date'2026-01-02')")
        assert spark.sql("select count(*) as n from probe.t").collect()[0]["n"] == 2
        assert (spark_server.warehouse_dir / "probe.db" / "t").is_dir()
    finally:
        spark.sql("drop database if exists probe cascade")
        spark.stop()
