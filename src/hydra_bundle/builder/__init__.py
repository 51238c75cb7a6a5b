"""The connected-side builder: spec → sources → cache → one signed bundle."""
