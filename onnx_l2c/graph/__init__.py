"""The graph layer: reading and editing an ONNX model's weights and consumers."""
