"""export: PyTorch masked LM -> ONNX artifact folder for deniro_rt (`python -m export --help`).

Library entry points: `export.pipeline.main(ExportConfig(...))`; validation helpers that bench/ reuses
live in `export.validate` (build_validation_set, torch_reference, score_fast_graph, compare_topk, ...).
"""

from .config import ExportConfig

__all__ = ["ExportConfig"]
