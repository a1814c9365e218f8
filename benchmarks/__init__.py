"""Benchmarks: each runs an anchor and flask-messaging side by side."""
