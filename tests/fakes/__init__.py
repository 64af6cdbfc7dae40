"""Local fake servers for tests and benchmarks (bound to 127.0.0.1 only)."""
