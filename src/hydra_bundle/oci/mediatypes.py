"""Media types we read and write (OCI image spec, Docker distribution, Helm, CNCF ModelPack)."""

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
ALL_MANIFEST_TYPES = INDEX_TYPES | MANIFEST_TYPES
ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])

HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_CHART = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
HELM_PROV = "application/vnd.cncf.helm.chart.provenance.v1.prov"

# CNCF ModelPack (model-spec) media types: one uncompressed layer per model file.
MODEL_ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"
MODEL_CONFIG = "application/vnd.cncf.model.config.v1+json"
MODEL_WEIGHT = "application/vnd.cncf.model.weight.v1.raw"
MODEL_WEIGHT_CONFIG = "application/vnd.cncf.model.weight.config.v1.raw"
MODEL_DOC = "application/vnd.cncf.model.doc.v1.raw"

# Our own artifact types for plain files and Kubernetes manifests.
FILE_ARTIFACT = "application/vnd.hydra-bundle.file.v1"
MANIFESTS_ARTIFACT = "application/vnd.hydra-bundle.manifests.v1"
FILE_LAYER = "application/octet-stream"
YAML_LAYER = "application/yaml"

ANN_REF_NAME = "org.opencontainers.image.ref.name"
ANN_TITLE = "org.opencontainers.image.title"
ANN_VERSION = "org.opencontainers.image.version"
ANN_KIND = "io.hydra-bundle.kind"
ANN_NAME = "io.hydra-bundle.name"

# The OCI "empty" config blob ``{}``.
EMPTY_JSON = b"{}"
EMPTY_DIGEST = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"


def model_layer_type(path: str) -> str:
    """ModelPack layer type for a model file, by name (weights, their configs/tokenizers, docs)."""
    name = path.rsplit("/", 1)[-1].lower()
    if name.endswith((".safetensors", ".bin", ".gguf", ".pt", ".pth", ".onnx", ".h5", ".msgpack")):
        return MODEL_WEIGHT
    if (name.endswith((".md", ".txt")) and not name.startswith(("merges", "vocab"))) or name in {"license"}:
        return MODEL_DOC
    return MODEL_WEIGHT_CONFIG
