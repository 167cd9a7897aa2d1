"""Benchmark harness: SafeNest against dnsmasq and unbound (``python -m bench.run``)."""
