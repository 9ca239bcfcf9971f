"""Benchmarks: `make bench` (serving and cache, bench/serving.py) and bench/gpu.py."""
