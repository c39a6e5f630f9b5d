"""Planning: per-tensor candidates from the registered methods and the global allocation."""
