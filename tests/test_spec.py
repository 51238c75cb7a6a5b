"""bundle-spec.yaml validation (`file:line: field.path: message`, exit 2), keygen and key handling, flags."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from hydra_bundle.errors import SpecError
from hydra_bundle.spec import load_spec
from tests.support.bundles import keypair, read_index, run_cli, write_spec

HEAD = """\
apiVersion: hydra-bundle/v1
kind: BundleSpec
metadata: {name: demo, version: "1.0.0", sequence: 1}
"""


def _spec(tmp_path: Path, body: str, head: str = HEAD) -> Path:
    p = tmp_path / "bundle-spec.yaml"
    p.write_text(head + textwrap.dedent(body))
    return p


def _build_errors(tmp_path: Path, spec: Path) -> list[str]:
    """Build SPEC unsigned; it must fail with exit 2 and write nothing. Returns the stderr lines."""
    out = tmp_path / "out.tar"
    res = run_cli(["build", "--no-agent-kit", spec, "-o", out, "--unsigned", "-q", "--cache-dir", tmp_path / "cache"])
    assert res.exit_code == 2, (res.exit_code, res.output)
    assert res.stdout == ""
    assert not out.exists()
    return res.stderr.splitlines()


def test_issue_example_spec_loads(tmp_path: Path) -> None:
    """The keys the issue says other tooling depends on load exactly as written."""
    a, b, c, d = "a" * 64, "B" * 64, "sha256:" + "c" * 64, "d" * 64
    p = _spec(tmp_path, f"""\
        platforms: [linux/amd64]
        images:
          - ref: ghcr.io/run-ai/fake-gpu-operator/device-plugin:0.0.63
        charts:
          - {{name: fake-gpu-operator, ref: oci://ghcr.io/run-ai/fake-gpu-operator/fake-gpu-operator, version: 0.0.63}}
          - {{name: dataset, repo: https://baizeai.github.io/charts, version: 0.1.11}}
        manifests:
          - {{name: gateway-api-crds, url: https://example.com/standard-install.yaml, sha256: {a}}}
        files:
          - {{name: nfs-installer, url: http://example.com/nfs-install.tar, sha256: {b}}}
        models:
          - name: qwen3-0.6b
            base_url: https://huggingface.co/Qwen/Qwen3-0.6B/resolve/abc123
            files: [{{path: config.json, sha256: {c}}}, {{path: model.safetensors, sha256: {d}}}]
        """)
    spec = load_spec(p)
    assert spec.metadata.sequence == 1 and spec.platforms == ["linux/amd64"]
    img = spec.images[0].reference
    assert (img.registry, img.repository, img.tag) == ("ghcr.io", "run-ai/fake-gpu-operator/device-plugin", "0.0.63")
    oci = spec.charts[0].oci_reference
    assert str(oci) == "ghcr.io/run-ai/fake-gpu-operator/fake-gpu-operator:0.0.63"
    assert spec.charts[1].repo == "https://baizeai.github.io/charts"
    assert spec.files[0].sha256 == "b" * 64  # normalized to lowercase hex
    assert spec.models[0].base_url.endswith("/abc123/")  # type: ignore[union-attr]
    assert spec.models[0].files[0].sha256 == "c" * 64


def test_platforms_default(tmp_path: Path) -> None:
    assert load_spec(_spec(tmp_path, "images: []\n")).platforms == ["linux/amd64"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param("colour: blue\n", ["bundle-spec.yaml:4: colour: unknown field"], id="unknown-top-level-field"),
        pytest.param(
            """\
            images:
              - ref: ghcr.io/a/b:1
              - ref: ghcr.io/a/b:2
                platform: linux/arm64
            """,
            ["bundle-spec.yaml:7: images[1].platform: unknown field"],
            id="unknown-nested-field",
        ),
        pytest.param(
            """\
            images:
              - ref: ghcr.io/ok/image:1
              - ref: "Not A Ref!"
            """,
            ["bundle-spec.yaml:6: images[1].ref: 'Not A Ref!': invalid repository path 'library/Not A Ref!' "
             "(lowercase, digits, . _ - separators)"],
            id="bad-ref",
        ),
        pytest.param(
            "images:\n  - ref: ghcr.io/a/b@sha256:1234\n",
            ["bundle-spec.yaml:5: images[0].ref: 'ghcr.io/a/b@sha256:1234': digest must be sha256:<64 lowercase hex>"],
            id="bad-digest-ref",
        ),
        pytest.param(
            """\
            files:
              - name: tool
                url: http://example.com/tool.tar
                sha256: not-a-digest
            """,
            ["bundle-spec.yaml:7: files[0].sha256: must be 64 hex digits (optionally prefixed with 'sha256:')"],
            id="bad-sha256",
        ),
        pytest.param(
            """\
            manifests:
              - url: http://example.com/crds.yaml
            """,
            ["bundle-spec.yaml:5: manifests[0].name: required field is missing"],
            id="missing-required",
        ),
        pytest.param(
            """\
            charts:
              - {name: dataset, repo: https://example.com/charts, version: 0.1.11}
              - {name: dataset, repo: https://example.com/other, version: 0.1.12}
            """,
            ["bundle-spec.yaml:6: charts[1].name: name 'dataset' already used by charts[0]"],
            id="duplicate-names",
        ),
        pytest.param(
            """\
            images:
              - ref: nginx
              - ref: docker.io/library/nginx:latest
            """,
            ["bundle-spec.yaml:6: images[1].ref: 'docker.io/library/nginx:latest' is served as "
             "docker.io/library/nginx:latest, like images[0]"],
            id="duplicate-image-after-normalization",
        ),
        pytest.param(
            f"""\
            images:
              - ref: ubuntu:24.04
              - ref: registry-1.docker.io/library/ubuntu:24.04@sha256:{"a" * 64}
            """,
            ["bundle-spec.yaml:6: images[1].ref: 'registry-1.docker.io/library/ubuntu:24.04@sha256:" + "a" * 64
             + "' is served as docker.io/library/ubuntu:24.04, like images[0]"],
            id="one-tag-two-spellings",
        ),
        pytest.param(
            """\
            files: []
            images: []
            files: []
            """,
            ["bundle-spec.yaml:6: files: duplicate key"],
            id="duplicate-yaml-key",
        ),
        pytest.param(
            "platforms: linux/amd64\n",
            ["bundle-spec.yaml:4: platforms: Input should be a valid list"],
            id="wrong-type-list",
        ),
        pytest.param(
            """\
            charts:
              - name: c
                ref: oci://ghcr.io/x/c
                version: [1]
            """,
            ["bundle-spec.yaml:7: charts[0].version: Input should be a valid string"],
            id="wrong-type-string",
        ),
        pytest.param(
            "charts:\n  - {name: c, version: 1.0.0}\n",
            ["bundle-spec.yaml:5: charts[0]: give exactly one of 'ref' (oci://…) or 'repo' (https://… classic "
             "repository)"],
            id="chart-without-source",
        ),
        pytest.param(
            """\
            models:
              - name: m
                base_url: http://example.com/m/
                files: [{path: ../etc/passwd}]
            """,
            ["bundle-spec.yaml:7: models[0].files[0].path: must be a relative path inside the model "
             "(no '..', no leading '/')"],
            id="model-path-escape",
        ),
    ],
)
def test_bad_spec_one_line_per_problem(tmp_path: Path, body: str, expected: list[str]) -> None:
    spec = _spec(tmp_path, textwrap.dedent(body))
    lines = _build_errors(tmp_path, spec)
    assert [ln.replace(str(spec), "bundle-spec.yaml") for ln in lines] == expected


def test_bad_spec_reports_every_problem(tmp_path: Path) -> None:
    spec = _spec(tmp_path, """\
        images:
          - ref: ghcr.io/ok/image:1
          - ref: ghcr.io/a/b@sha256:zz
        files:
          - {name: f, url: ftp://example.com/f}
          - {name: g, url: http://example.com/g, extra: 1}
        """, head=HEAD.replace("sequence: 1", "sequence: -1"))
    lines = _build_errors(tmp_path, spec)
    assert len(lines) == 4, lines
    assert all(ln.startswith(f"{spec}:") for ln in lines)
    got = {ln.split(": ", 2)[1] for ln in lines}
    assert got == {"metadata.sequence", "images[1].ref", "files[0].url", "files[1].extra"}
    by_field = {ln.split(": ", 2)[1]: int(ln.split(":")[1]) for ln in lines}
    assert by_field == {"metadata.sequence": 3, "images[1].ref": 6, "files[0].url": 8, "files[1].extra": 9}


def test_invalid_yaml_and_unreadable(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "images: [\n")
    [line] = _build_errors(tmp_path, spec)
    assert line.startswith(f"{spec}:5: not valid YAML")
    missing = tmp_path / "nope.yaml"
    res = run_cli(["build", "--no-agent-kit", missing, "-o", tmp_path / "o.tar", "--unsigned", "-q"])
    assert res.exit_code == 2 and res.stderr.strip() == f"{missing}: cannot read: No such file or directory"


def test_library_error_carries_problems(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "images:\n  - {ref: 'UPPER/case'}\n")
    with pytest.raises(SpecError) as ei:
        load_spec(spec)
    assert ei.value.exit_code == 2
    assert len(ei.value.problems) == 1 and ei.value.problems[0].startswith(f"{spec}:5: images[0].ref: ")


# ---------------------------------------------------------------- flags


def test_unsigned_must_be_explicit(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml")
    out = tmp_path / "b.tar"
    res = run_cli(["build", "--no-agent-kit", spec, "-o", out, "--cache-dir", tmp_path / "c"])
    assert res.exit_code == 2
    assert "signing key is required" in res.stderr and "--unsigned" in res.stderr
    key, _ = keypair(tmp_path)
    res = run_cli(["build", "--no-agent-kit", spec, "-o", out, "--key", key, "--unsigned"])
    assert res.exit_code == 2 and "exclude each other" in res.stderr
    assert not out.exists()


def test_bad_output_path_refused_up_front(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml")
    missing = tmp_path / "missing"
    res = run_cli(["build", "--no-agent-kit", spec, "-o", missing / "b.tar", "--unsigned"])
    assert res.exit_code == 2
    assert res.stderr.strip() == f"error: -o {missing / 'b.tar'}: {missing} is not a directory"
    res = run_cli(["build", "--no-agent-kit", spec, "-o", tmp_path, "--unsigned"])
    assert res.exit_code == 2 and res.stderr.strip() == f"error: -o {tmp_path}: is a directory"


def test_expires_and_source_date_epoch(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("hello\n")
    spec = write_spec(tmp_path / "s.yaml", files=[{"name": "f", "path": "f.txt"}])
    out = tmp_path / "b.tar"
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    base = ["build", "--no-agent-kit", spec, "-o", out, "--unsigned", "-q", "--cache-dir", tmp_path / "c"]
    res = run_cli([*base, "--expires", "36h"], env=env)
    assert res.exit_code == 0, res.output
    idx = read_index(out)
    assert (idx["created"], idx["expires"]) == ("2023-11-14T22:13:20Z", "2023-11-16T10:13:20Z")
    assert "expires 2023-11-16T10:13:20Z  UNSIGNED" in run_cli(["inspect", out]).stdout
    out.unlink()
    base[-1] = tmp_path / "c2"
    res = run_cli([*base, "--expires", "soon"], env=env)
    assert res.exit_code == 2 and "expires 'soon': expected RFC 3339 time or a duration like 90d" in res.stderr
    res = run_cli(base, env={"SOURCE_DATE_EPOCH": "yesterday"})
    assert res.exit_code == 2 and "SOURCE_DATE_EPOCH='yesterday' is not an integer" in res.stderr
    assert not out.exists()
    assert list((tmp_path / "c2" / "blobs" / "sha256").iterdir()) == []  # refused before copying anything


def test_empty_bundle_unsigned(tmp_path: Path) -> None:
    """An explicit --unsigned build works; the index says so (no member 2) and verify refuses it."""
    spec = write_spec(tmp_path / "s.yaml")
    out = tmp_path / "b.tar"
    res = run_cli(["build", "--no-agent-kit", spec, "-o", out, "--unsigned", "--json", "--cache-dir", tmp_path / "c"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["signed"] is False and summary["blobs"] == 0
    assert read_index(out)["blobs"] == []
    _, pub = keypair(tmp_path)
    res = run_cli(["verify", out, "--pub", pub])
    assert res.exit_code == 1 and "unsigned" in res.stderr


# ---------------------------------------------------------------- keygen


def test_keygen_writes_pem_pair_and_refuses_overwrite(tmp_path: Path) -> None:
    key, pub = keypair(tmp_path, env={"HYDRA_BUNDLE_KEY_PASSWORD": None})
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert key.stat().st_mode & 0o777 == 0o600
    before = key.read_bytes()
    res = run_cli(["keygen", tmp_path / "k"])
    assert res.exit_code == 2 and "refusing to overwrite" in res.stderr
    assert key.read_bytes() == before


def test_keygen_with_password(tmp_path: Path) -> None:
    pw = {"HYDRA_BUNDLE_KEY_PASSWORD": "correct horse"}
    key, pub = keypair(tmp_path, env=pw)
    assert key.read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    spec = write_spec(tmp_path / "s.yaml")
    out = tmp_path / "b.tar"
    args = ["build", "--no-agent-kit", spec, "-o", out, "--key", key, "-q", "--cache-dir", tmp_path / "c"]

    res = run_cli(args, env={"HYDRA_BUNDLE_KEY_PASSWORD": "wrong"})
    assert res.exit_code == 2
    assert res.stderr.strip() == f"error: {key}: not a usable PEM private key (wrong HYDRA_BUNDLE_KEY_PASSWORD?)"
    assert not out.exists()

    res = run_cli(args, env={"HYDRA_BUNDLE_KEY_PASSWORD": None})
    assert res.exit_code == 2
    assert res.stderr.strip() == f"error: {key}: key is encrypted; set HYDRA_BUNDLE_KEY_PASSWORD"

    res = run_cli(args, env=pw)
    assert res.exit_code == 0, res.output
    res = run_cli(["verify", out, "--pub", pub])
    assert res.exit_code == 0, res.output


def test_bad_public_key_is_usage_error(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "s.yaml")
    key, _ = keypair(tmp_path)
    out = tmp_path / "b.tar"
    assert run_cli(["build", "--no-agent-kit",
                    spec, "-o", out, "--key", key, "-q", "--cache-dir", tmp_path / "c"]).exit_code == 0
    junk = tmp_path / "junk.pub"
    junk.write_text("not a key\n")
    res = run_cli(["verify", out, "--pub", junk])
    assert res.exit_code == 2 and res.stderr.strip() == f"error: {junk}: not a PEM public key"


def test_bad_requirements_name_field_and_line(tmp_path: Path) -> None:
    spec = _spec(tmp_path, """\
        requirements:
          node_memory: lots
          apis: [Gateway]
          kubernetes: "one"
        """)
    lines = sorted(ln.replace(str(spec), "bundle-spec.yaml") for ln in _build_errors(tmp_path, spec))
    assert lines == [
        "bundle-spec.yaml:5: requirements.node_memory: 'lots' is not a quantity like 7Gi, 512Mi, 8G or bytes",
        "bundle-spec.yaml:6: requirements.apis: 'Gateway' is not group/version or group/version/Kind (apps/v1, "
        "gateway.networking.k8s.io/v1/Gateway, v1/Service)",
        "bundle-spec.yaml:7: requirements.kubernetes: 'one' is not a Kubernetes version like 1.25"]
    spec = _spec(tmp_path, "requirements:\n  models:\n    nope: {memory: 7Gi}\n")
    assert [ln.replace(str(spec), "bundle-spec.yaml") for ln in _build_errors(tmp_path, spec)] == [
        "bundle-spec.yaml:6: requirements.models.nope: no model named 'nope' in `models:`"]
