"""Benchmark stage: `python -m bench --help`. main(BenchConfig) runs parity, latency, throughput, train."""

from .config import BenchConfig

__all__ = ["BenchConfig"]
