"""Kubernetes objects as data: kinds, identity keys, our ownership labels, readiness rules, the images inside
workloads, and manifests with site variables. No client and no IO, so the build side (``lint``) and the site side
(``apply``) read objects the same way and planning never imports the ``kubernetes`` package."""
