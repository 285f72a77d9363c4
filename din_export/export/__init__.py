"""From a trained model to verified ONNX: the graph contracts, parity against PyTorch, precision, verification,
re-export of a bundle and the Triton repository entry."""
