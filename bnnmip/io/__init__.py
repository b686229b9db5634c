"""Reading models and data: the ONNX reader, onnxruntime parity, and the image datasets."""
