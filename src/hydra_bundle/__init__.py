"""hydra-bundle: signed OCI-layout bundles for air-gapped Kubernetes sites."""

__version__ = "0.1.0"
