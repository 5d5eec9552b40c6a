"""The chaos run: CLI workers under signals on real stores, and a checker of every promise."""
