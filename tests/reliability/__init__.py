"""Reliability suite: crash, concurrency, fuzzing, upstream-fault, shutdown and replica checks."""
