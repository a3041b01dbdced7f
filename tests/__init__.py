"""chatd test suite."""
