"""The read path: load or expand a compressed model. Imports no planner or pass."""
