"""shadow-proxy: mirror a legacy service's traffic to an AI agent, compare, shift."""

__version__ = "0.1.0"
