"""The HTTP edge: chatd.v1.ChatService over Connect, gRPC-Web and HTTP/JSON (CHATD_HTTP_LISTEN)."""
