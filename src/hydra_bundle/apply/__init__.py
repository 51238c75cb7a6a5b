"""Apply a bundle on site: the spec's ``deploy`` steps as idempotent steps the agent journals (contract:
``step.ApplyStep``).

``site`` (where things are), ``plan`` (bundle index + site → ordered steps), ``steps`` (one class per action),
``runtime`` (what a run shares), and the adapters behind them: ``kube`` (the cluster; ``applier`` applies
objects, ``wait`` and ``prune`` use it), ``helm``, ``mysql``, ``tls`` (site CA), ``warmup`` (Dataset CR),
``rewrite`` (images → site registry), ``mirrors`` (node registry-mirror snippets). Importing the package or
``plan`` does not import the ``kubernetes`` client; the first step that reaches the cluster does.
"""
