"""python -m deniro_rt batch (cli.py) and the Ray Data adapter (ray.py, extra deniro[ray]).

Both fill through FillMask.fill_arrays: Arrow in, Arrow out, list columns. See cli.py's docstring for
the output layout (parquet shards written as the fill goes, --resume after a kill).
"""

from __future__ import annotations

from .cli import BatchConfig, main, run_batch

__all__ = ["BatchConfig", "main", "run_batch"]
