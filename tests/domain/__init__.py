"""The domain layer: turns, tool rounds, pauses, cancellation and retries, without a transport."""
