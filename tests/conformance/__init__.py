"""The shared conformance suite: every behaviour ARCHITECTURE.md guarantees, on every backend."""
