"""Runners: tarpipe composed with the Docker SDK."""
