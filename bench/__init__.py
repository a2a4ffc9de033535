"""Side-by-side benchmarks: shadow-proxy, nginx ``mirror`` and Envoy, in one run.

Run from the repository root with ``python -m bench`` (or ``make bench``).
"""
