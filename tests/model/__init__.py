"""Model-based tests: each backend against an executable reference model of the contract."""
