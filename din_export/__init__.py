"""din-export: train a Deep Interest Network, export it to verified ONNX, bundle it for din_runtime."""

__version__ = "0.1.0"
