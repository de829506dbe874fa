"""Recordings: one Parquet file per `tracer record` run, self-describing."""
