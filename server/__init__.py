"""chatd: durable multi-turn Gemini chat sessions served over gRPC."""
