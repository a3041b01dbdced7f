"""chatd's benchmark harness: chatd against a bare grpc.aio server, run with `python -m bench`."""
