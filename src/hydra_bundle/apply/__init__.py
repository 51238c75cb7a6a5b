"""Apply a bundle on site: the spec's ``deploy`` steps as journaled, idempotent steps (see ``base.Step``).

Modules: ``deploy_spec`` (schemas), ``subst`` (``${site.x}`` variables), ``rewrite`` (images → site registry,
containerd/CRI-O mirror config), ``kube`` (server-side apply, waits, prune, nodes), ``helm``, ``mysql``,
``warmup`` (Dataset CR), ``tls`` (site CA and gateway certificates), ``steps`` (the step classes), ``plan``
(bundle index + site → ordered steps). The agent runs them as journal steps (``agent/deploy.py``).
This package imports nothing heavy at import time (the spec loader uses ``deploy_spec``).
"""
