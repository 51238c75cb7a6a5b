"""The `tls` deploy action offline: site CA and leaf certificates (reuse, re-issue), site files, the plan branch,
`agent ca`, and the agent config's `site:` section (file:line errors). No servers needed."""

from __future__ import annotations

import datetime as dt
import re
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hydra_bundle.apply.plan import build_plan, step_names
from hydra_bundle.apply.site import SiteConfig
from hydra_bundle.apply.steps import TlsStep
from hydra_bundle.apply.tls import LEAF_DAYS, SiteCA, cert_hosts, covers, from_files
from hydra_bundle.bundle.sign import keygen
from hydra_bundle.errors import ApplyError, SpecError
from tests.support.agent import run_cli
from tests.support.applyindex import synthetic_index

NOW = dt.datetime.now(dt.UTC)


def site(**kw: Any) -> SiteConfig:
    base: dict[str, Any] = {"cluster_name": "jxj31-mspider", "domain": "cn-sh-a1", "registry": "10.0.0.5:5000",
                            "file_server": "http://10.0.0.5:81"}
    base.update(kw)
    return SiteConfig.model_validate(base)


def test_site_ca_is_created_once_and_the_leaf_is_reused(tmp_path: Path) -> None:
    ca = SiteCA(tmp_path / "tls", "jxj31-mspider")
    pem = ca.pem()
    assert stat.S_IMODE(ca.key_path.stat().st_mode) == 0o600
    assert SiteCA(tmp_path / "tls").pem() == pem  # kept, not regenerated
    ca_cert = x509.load_pem_x509_certificate(pem)
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert "jxj31-mspider" in ca_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value

    m1 = ca.leaf("default-cn-sh-a1", ["cn-sh-a1", "10.64.24.211"])
    assert m1.issued and m1.source == "site CA" and m1.ca_pem == pem
    leaf = x509.load_pem_x509_certificate(m1.cert_pem)
    leaf.verify_directly_issued_by(ca_cert)
    assert sorted(cert_hosts(leaf)) == ["10.64.24.211", "cn-sh-a1"]
    assert leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH])
    days = (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days
    assert LEAF_DAYS <= days <= LEAF_DAYS + 1
    key = serialization.load_pem_private_key(m1.key_pem, None)
    assert key.public_key() == leaf.public_key()

    m2 = ca.leaf("default-cn-sh-a1", ["10.64.24.211", "cn-sh-a1"])  # same hosts, any order: same material
    assert not m2.issued and (m2.cert_pem, m2.key_pem) == (m1.cert_pem, m1.key_pem)

    m3 = ca.leaf("default-cn-sh-a1", ["cn-sh-a1"])  # hosts changed: re-issued
    assert m3.issued and m3.cert_pem != m1.cert_pem and cert_hosts(x509.load_pem_x509_certificate(m3.cert_pem)) == [
        "cn-sh-a1"]

    soon = NOW + dt.timedelta(days=LEAF_DAYS - 20)  # expires within 30 days: re-issued
    m4 = ca.leaf("default-cn-sh-a1", ["cn-sh-a1"], now=soon)
    assert m4.issued
    assert not ca.leaf("default-cn-sh-a1", ["cn-sh-a1"], now=soon).issued

    for p in (ca.cert_path, ca.key_path):  # a new CA (operator moved the old one away): leaves are re-issued
        p.unlink()
    assert SiteCA(tmp_path / "tls").pem() != pem
    m5 = SiteCA(tmp_path / "tls").leaf("default-cn-sh-a1", ["cn-sh-a1"], now=soon)
    assert m5.issued


def _self_signed(tmp: Path, names: list[str], days: int = 90) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .sign(key, hashes.SHA256()))
    c, k = tmp / f"{names[0]}.crt", tmp / f"{names[0]}.key"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return c, k


def test_site_files_are_checked_not_changed(tmp_path: Path) -> None:
    c, k = _self_signed(tmp_path, ["*.example.com", "cn-sh-a1"])
    m = from_files(c, k, ["cn-sh-a1", "gw.example.com"])
    assert m.source == "site files" and m.notes == [] and m.cert_pem == c.read_bytes() and m.ca_pem is None
    m = from_files(c, k, ["other"])
    assert m.notes and "does not cover other" in m.notes[0]
    c2, k2 = _self_signed(tmp_path, ["b"], days=10)
    assert any("expires on" in n for n in from_files(c2, k2, ["b"]).notes)
    with pytest.raises(ApplyError, match="does not belong to the certificate"):
        from_files(c, k2, ["cn-sh-a1"])
    k2.write_text("garbage")
    with pytest.raises(ApplyError, match=r"not an unencrypted PEM private key \(ValueError\)"):
        from_files(c2, k2, ["b"])
    assert covers(["*.a.b"], "x.a.b") and not covers(["*.a.b"], "x.y.a.b") and not covers(["*.a.b"], "a.b")


def test_tls_plan_substitutes_site_values_and_names_bad_ones(tmp_path: Path) -> None:
    steps = [{"tls": {"secret": "${site.domain}", "namespace": "istio-system",
                      "hosts": ["${site.domain}", "*.${site.domain}"]}}]
    idx, read = synthetic_index(tmp_path, {"deploy": {"steps": steps}})
    assert step_names(idx) == ["tls", "prune"]
    plan = build_plan(idx, site(), read)
    step = plan.steps[0]
    assert isinstance(step, TlsStep) and (step.secret, step.namespace) == ("cn-sh-a1", "istio-system")
    assert step.hosts == ["cn-sh-a1", "*.cn-sh-a1"]
    assert "Secret istio-system/cn-sh-a1" in plan.text() and "site CA" in plan.text()
    c, k = _self_signed(tmp_path, ["cn-sh-a1"])
    with_files = build_plan(idx, site(tls={"cert_file": str(c), "key_file": str(k)}), read)
    assert f"site.tls files {c}" in with_files.text()

    d = tmp_path / "bad"
    d.mkdir()
    bad = [{"name": "gw-tls", "tls": {"secret": "${site.vars.secret}", "hosts": ["${site.domain}"]}}]
    idx, read = synthetic_index(d, {"deploy": {"steps": bad}})
    with pytest.raises(SpecError) as e:
        build_plan(idx, site(vars={"secret": "Not_A_Name"}), read)
    assert e.value.problems == ["spec deploy.steps[0].tls.secret: 'Not_A_Name' is not a lowercase DNS name (a-z, "
                                "0-9, '-', '.')"]


def _config(tmp_path: Path, pub: Path, site_yaml: str) -> Path:
    p = tmp_path / "agent.yaml"
    p.write_text(f"drop_dir: {tmp_path}/drop\nstate_dir: {tmp_path}/state\ntrusted_keys: [{pub}]\n{site_yaml}")
    return p


def test_site_config_errors_name_file_and_line(tmp_path: Path) -> None:
    pub = keygen(tmp_path / "k")[1]
    cfg = _config(tmp_path, pub, "site:\n  cluster_name: c\n  domain: Bad_Domain\n  registry: 10.0.0.5:5000\n"
                                 "  file_server: http://10.0.0.5:81\n  tls: {cert_file: /nonexistent.crt, "
                                 "key_file: /nonexistent.key}\n")
    res = run_cli("agent", "status", "--config", str(cfg), timeout=30)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert re.match(rf"^{re.escape(str(cfg))}:6: site.domain: .*lowercase DNS name", lines[0]), lines
    assert any(line.startswith(f"{cfg}:9: site.tls.cert_file: /nonexistent.crt does not exist") for line in lines)


def test_example_config_site_block_is_valid(tmp_path: Path) -> None:
    """The commented `site:` block of systemd/agent.example.yaml, uncommented, is a valid config."""
    pub = keygen(tmp_path / "k")[1]
    text = (Path(__file__).resolve().parents[1] / "systemd/agent.example.yaml").read_text()
    start = text.index("# site:")
    block = []
    for line in text[start:].splitlines():
        if not line.startswith("#"):
            break
        body = line[2:]
        if body.lstrip().startswith("#") or not body.strip():
            continue
        block.append(body.split(" #", 1)[0].rstrip())
    data = yaml.safe_load("\n".join(block))
    from hydra_bundle.agent.config import AgentConfig

    cfg = AgentConfig.model_validate({"drop_dir": str(tmp_path / "d"), "state_dir": str(tmp_path / "s"),
                                      "trusted_keys": [str(pub)], **data})
    assert cfg.site is not None and cfg.site.domain == "cn-sh-a1" and cfg.site.mysql is not None


def test_agent_ca_prints_the_same_ca_every_time(tmp_path: Path) -> None:
    pub = keygen(tmp_path / "k")[1]
    cfg = _config(tmp_path, pub, "")
    first = run_cli("agent", "ca", "--config", str(cfg), timeout=30)
    assert first.returncode == 0, first.stderr
    cert = x509.load_pem_x509_certificate(first.stdout.encode())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert "SHA-256" in first.stderr
    out = tmp_path / "ca.pem"
    second = run_cli("agent", "ca", "--config", str(cfg), "-o", str(out), timeout=30)
    assert second.returncode == 0 and out.read_text() == first.stdout
    assert (tmp_path / "state/tls/ca.key").exists()
