"""The write path: compress a model into a graph plus sidecar, and its report."""
