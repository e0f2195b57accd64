"""Interlock benchmarks: `bench.run`, `bench.idle_workers` and `bench.rss_flat`.

See bench/README.md for the commands, the machine and the figures measured.
"""
