"""End-to-end tests: the examples under uvicorn over real HTTP, and the dashboard in Chromium."""
