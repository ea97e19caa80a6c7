"""Deployment: exporting the recurrent step (ONNX) and, later, serving it."""
