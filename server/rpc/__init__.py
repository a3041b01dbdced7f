"""The gRPC edge: the only code that touches grpc and the generated chatd.v1 stubs."""
