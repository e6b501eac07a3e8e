"""Benchmarks and simulations of forestreet-sidecar (not part of the installed package)."""
