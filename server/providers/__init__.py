"""Model providers: implementations of the domain's ModelProvider Protocol."""
