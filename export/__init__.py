"""Export an edited UNet to ONNX (through optimum), TensorRT engines and a Triton repository.

Installed as ``esd_sdk.export``.
"""
