"""Demo pieces: fake legacy/agent services, a traffic generator and a live metrics summary.

They exist so `shadow-proxy demo` can show the whole loop (mirror, compare, report)
on one machine without any real backend.
"""
