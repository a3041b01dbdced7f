"""Conformance suites of the ports: every ModelProvider and every ToolRunner, one suite each."""
