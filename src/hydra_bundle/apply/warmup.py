"""Model warm-up: the BaizeAI Dataset CR that pre-loads a model from the agent's file server (runbook
"Worker Cluster Model Warm-up"), and how to read its status (written by the dataset controller).

Status (dataset.baizeai.io v0.1.11): ``status.phase`` PENDING → PROCESSING → READY | FAILED, with
``lastSucceedRound``, ``inProcessingRound``, ``syncRoundStatuses`` and ``conditions``.
"""

from __future__ import annotations

from typing import Any

from ..errors import ApplyError
from ..spec.deploy import Warmup
from .site import SiteConfig

DATASET_API = "dataset.baizeai.io/v1alpha1"
DATASET_KIND = "Dataset"
DATASET_CRD = "datasets.dataset.baizeai.io"
MODEL_ID_LABEL = "hydra.io/model-id"


def dataset_object(w: Warmup, site: SiteConfig) -> dict[str, Any]:
    """The Dataset as the runbook writes it, with the site's file-server URL and storage class."""
    name = w.dataset or w.model
    return {
        "apiVersion": DATASET_API,
        "kind": DATASET_KIND,
        "metadata": {"name": name, "namespace": w.namespace, "labels": {MODEL_ID_LABEL: w.model_id or w.model}},
        "spec": {
            "dataSyncRound": w.data_sync_round,
            "share": w.share,
            "source": {"type": "HTTP", "uri": w.uri or site.model_url(w.model), "options": {"repoType": "MODEL"}},
            "mountOptions": {"uid": w.mount.uid, "gid": w.mount.gid, "mode": w.mount.mode, "path": w.mount.path},
            "volumeClaimTemplate": {"spec": {"storageClassName": w.storage_class or site.storage_class}},
        },
    }


def dataset_readiness(live: dict[str, Any]) -> tuple[bool, str]:
    """(ready, message); ApplyError when the controller reports FAILED."""
    st = live.get("status") or {}
    spec = live.get("spec") or {}
    phase = str(st.get("phase") or "PENDING")
    want = int(spec.get("dataSyncRound") or 1)
    succeeded = st.get("lastSucceedRound")
    parts = [f"phase {phase}"]
    if st.get("inProcessingRound") is not None:
        parts.append(f"syncing round {st['inProcessingRound']}/{want}")
    if succeeded is not None:
        parts.append(f"last succeeded round {succeeded}")
    msg = ", ".join(parts)
    if phase == "FAILED":
        why = "; ".join(f"{c.get('type')}: {c.get('message')}" for c in st.get("conditions") or []
                        if isinstance(c, dict) and c.get("status") != "True") or "no condition message"
        md = live.get("metadata") or {}
        raise ApplyError(f"Dataset {md.get('namespace')}/{md.get('name')} FAILED ({why}); the dataset controller "
                         f"retries on its own, re-run the step to wait again")
    ready = phase == "READY" and (succeeded is None or int(succeeded) >= want)
    return ready, msg
