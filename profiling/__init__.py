"""Profiling tools: flame graphs of a run (flame.py), perf maps for numba code (perfmap.py), stage costs."""
