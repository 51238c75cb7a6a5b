"""Thin click commands: parse flags, call a package, print."""
