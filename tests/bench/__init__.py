"""Tests of the benchmarks' runners (``bench/``)."""
