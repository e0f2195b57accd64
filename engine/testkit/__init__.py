"""Offline blueprint tests (`interlock test`): test files, the runner, coverage."""
