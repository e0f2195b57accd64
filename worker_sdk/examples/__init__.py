"""Runnable examples: `python -m worker_sdk.examples.example_worker`."""
