"""Model code. onnxruntime and torch are imported only below this package."""
