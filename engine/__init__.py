"""Interlock engine: blueprint language, compiler, DOT export and the job store."""
