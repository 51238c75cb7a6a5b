"""The bundle spec (``bundle-spec.yaml``, format v1): schema (``model``, ``deploy``), build variables
(``buildvars``) and a loader whose errors name file, line and field (``load``, over the generic ``yamlmodel``)."""

from .load import load_spec
from .model import BundleSpec
from .yamlmodel import load_yaml_model

__all__ = ["BundleSpec", "load_spec", "load_yaml_model"]
