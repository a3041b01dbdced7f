"""The chat domain: sessions, messages, turns and the ports they need (stdlib only)."""
