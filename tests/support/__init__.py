"""Test support: real local services (registry, file server) and synthetic images/charts."""
