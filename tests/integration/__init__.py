"""Process-level tests: real worker processes, signals, crashes, one SQLite file."""
