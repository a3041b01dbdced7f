"""Store tests: one conformance suite run against every backend, plus backend specifics."""
