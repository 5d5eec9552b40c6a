"""Small apps the integration tests run under real workers."""
