"""deniro_rt: fast batched fill-mask on ONNX Runtime. Imports no torch and no transformers."""
