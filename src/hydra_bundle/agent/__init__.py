"""The on-site agent: watch → settle → verify → ingest (store) → publish (registry, file server, push) → apply.

| module | job |
| --- | --- |
| ``config``          | ``agent.yaml`` schema (unknown keys and bad values: one error, exit 2) |
| ``configpath``      | where ``agent.yaml`` is found (apart from the schema: ``--help`` names it without pydantic) |
| ``journal``         | sqlite state: bundles, their ordered steps, published refs/paths/blobs, history, seen drops |
| ``steps``           | the step mechanism: a bundle's ordered plan of named steps, run and resumed by the journal |
| ``store``           | the content store: an OCI image layout under ``state_dir/store``, dedup across bundles |
| ``settle``          | when a file in the drop dir is complete (``*.part`` rename, stable size/mtime, tar trailer) |
| ``watch``           | inotify (watchdog) plus periodic rescans of the drop dir |
| ``pipeline``        | verify-first pipeline for one file: signature, admission checks, run the steps, refuse |
| ``quarantine``      | move a refused file to ``state_dir/quarantine/`` with its ``.reason.json`` |
| ``ingest``          | the ``ingest`` step: every member into the store, verified while copied |
| ``publish``         | the ``publish`` step: make a stored bundle visible to the servers in one transaction |
| ``published``       | the published view (tags, blobs, model/file paths) and repository naming |
| ``push``            | the ``push`` step: copy images and charts to the site's registry |
| ``deploy``          | the ``apply:*`` steps: the spec's ``deploy`` steps, run by ``hydra_bundle.apply`` on ``site:`` |
| ``registry_server`` | read-only OCI distribution API straight from the store |
| ``file_server``     | ``/model/<name>/<path>`` and ``/files/<name>/<file>`` with listings rclone reads |
| ``httpbase``        | threading server bound to the configured address, Range, sendfile |
| ``metrics``         | prometheus ``/metrics`` and ``/healthz`` |
| ``readiness``       | ``/healthz`` on the registry and file listeners: ready to serve? (a load balancer's probe) |
| ``notify``          | sd_notify (READY, STATUS, WATCHDOG) without extra dependencies |
| ``log``             | structured key=value logs on stderr (journald-friendly) |
| ``daemon``          | ``agent run``: servers + watch loop |
"""
