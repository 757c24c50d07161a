"""Builders of verl RL parquet files for LTE training sets and the six math benchmarks."""
