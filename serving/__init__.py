"""Runtimes over PyTorch, ONNX Runtime and TensorRT, a pipeline on them, and latency benchmarks.

Installed as ``esd_sdk.serving``.
"""
