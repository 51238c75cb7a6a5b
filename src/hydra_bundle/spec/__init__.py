"""The bundle spec (``bundle-spec.yaml``, format v1): schema and a loader whose errors name file, line and field."""

from .load import load_spec, load_yaml_model
from .model import BundleSpec

__all__ = ["BundleSpec", "load_spec", "load_yaml_model"]
