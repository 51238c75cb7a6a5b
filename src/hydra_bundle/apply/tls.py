"""Gateway certificates: from the site's files, or from a site CA the agent creates once and keeps.

The site CA lives in ``state_dir/tls/`` (``ca.crt``, ``ca.key`` 0600; ECDSA P-256, 10 years). A leaf per
Secret (``leaf-<namespace>-<secret>.crt/.key``) is issued for the requested hosts (SANs; 825 days, the limit
browsers accept) and **reused** on every run, so re-applying writes the same Secret. It is re-issued only when
the host list changes, it expires within 30 days, or it was not signed by the current CA. Operators export the
CA with ``hydra-bundle agent ca`` and trust it ("set the local computer to trust the certificate").
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import ApplyError

CA_DAYS = 3650
LEAF_DAYS = 825
RENEW_BEFORE = dt.timedelta(days=30)
PrivateKey = ec.EllipticCurvePrivateKey


@dataclass
class Material:
    """What goes into a kubernetes.io/tls Secret, and what to tell the operator about it."""

    cert_pem: bytes
    key_pem: bytes
    hosts: list[str]                 # SANs of the certificate
    not_after: dt.datetime
    source: str                      # "site CA" | "site files"
    issued: bool = False             # a new leaf was issued on this run
    ca_pem: bytes | None = None
    notes: list[str] = field(default_factory=list)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def fingerprint(cert: x509.Certificate | bytes) -> str:
    """SHA-256 fingerprint as browsers and ``openssl x509 -fingerprint -sha256`` show it."""
    if isinstance(cert, bytes):
        cert = x509.load_pem_x509_certificate(cert)
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def cert_hosts(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName), *(str(a) for a in san.get_values_for_type(x509.IPAddress))]


def covers(cert_names: list[str], host: str) -> bool:
    """RFC 6125 matching: exact, or one left-most wildcard label."""
    host = host.lower()
    for n in (c.lower() for c in cert_names):
        if n == host:
            return True
        if n.startswith("*.") and "." in host and host.split(".", 1)[1] == n[2:]:
            return True
    return False


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _owner_like(path: Path, ref: Path) -> None:
    """When root creates state files (``agent ca`` run by an operator), give them to the agent's user."""
    if os.geteuid() == 0:
        st = ref.stat()
        with contextlib.suppress(OSError):
            os.chown(path, st.st_uid, st.st_gid)


class SiteCA:
    """The site CA under ``directory`` (created on first use; a lock keeps concurrent agents/CLIs consistent)."""

    def __init__(self, directory: Path, cluster_name: str = "site"):
        self.dir = Path(directory)
        self.cluster_name = cluster_name
        self.cert_path = self.dir / "ca.crt"
        self.key_path = self.dir / "ca.key"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def exists(self) -> bool:
        return self.cert_path.is_file() and self.key_path.is_file()

    def ensure(self) -> tuple[x509.Certificate, PrivateKey, bool]:
        """(CA certificate, key, created now)."""
        with self._locked():
            if self.exists():
                return (*self._load(), False)
            key = ec.generate_private_key(ec.SECP256R1())
            cn = f"hydra-bundle site CA {self.cluster_name}"[:64]
            name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hydra-bundle"),
                              x509.NameAttribute(NameOID.COMMON_NAME, cn)])
            now = _now()
            ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
            cert = (
                x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                             crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(ski, critical=False)
                .sign(key, hashes.SHA256())
            )
            _write(self.key_path, _key_pem(key), 0o600)
            _write(self.cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
            for p in (self.dir, self.key_path, self.cert_path):
                _owner_like(p, self.dir.parent)
            return cert, key, True

    def _load(self) -> tuple[x509.Certificate, PrivateKey]:
        try:
            cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
            key = serialization.load_pem_private_key(self.key_path.read_bytes(), None)
        except (OSError, ValueError) as e:
            raise ApplyError(f"site CA in {self.dir} is unreadable ({e}); move it away to create a new one "
                             f"(clients must then trust the new CA)") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ApplyError(f"{self.key_path}: not an ECDSA key")
        return cert, key

    def pem(self) -> bytes:
        cert, _, _ = self.ensure()
        return cert.public_bytes(serialization.Encoding.PEM)

    def leaf(self, label: str, hosts: list[str], now: dt.datetime | None = None) -> Material:
        """The leaf for ``label`` (``<namespace>-<secret>``) covering exactly ``hosts``; reused while valid."""
        ca, ca_key, _ = self.ensure()
        now = now or _now()
        crt, keyp = self.dir / f"leaf-{label}.crt", self.dir / f"leaf-{label}.key"
        ca_pem = ca.public_bytes(serialization.Encoding.PEM)
        with self._locked():
            old = self._load_leaf(crt, keyp, ca)
            if old is not None:
                cert, key_pem = old
                if sorted(cert_hosts(cert)) == sorted(hosts) and cert.not_valid_after_utc - RENEW_BEFORE > now:
                    return Material(cert.public_bytes(serialization.Encoding.PEM), key_pem, cert_hosts(cert),
                                    cert.not_valid_after_utc, "site CA", False, ca_pem)
            key = ec.generate_private_key(ec.SECP256R1())
            cert = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0][:64])]))
                .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                             crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                .add_extension(_san(hosts), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256())
            )
            key_pem = _key_pem(key)
            cert_pem = cert.public_bytes(serialization.Encoding.PEM)
            _write(keyp, key_pem, 0o600)
            _write(crt, cert_pem, 0o644)
            for p in (keyp, crt):
                _owner_like(p, self.dir.parent)
            return Material(cert_pem, key_pem, list(hosts), cert.not_valid_after_utc, "site CA", True, ca_pem)

    @staticmethod
    def _load_leaf(crt: Path, keyp: Path, ca: x509.Certificate) -> tuple[x509.Certificate, bytes] | None:
        """The stored leaf when it is intact, matches its key and was signed by ``ca``; else None."""
        try:
            cert = x509.load_pem_x509_certificate(crt.read_bytes())
            key_pem = keyp.read_bytes()
            key = serialization.load_pem_private_key(key_pem, None)
            cert.verify_directly_issued_by(ca)
        except (OSError, ValueError, TypeError, InvalidSignature):
            return None
        if key.public_key() != cert.public_key():
            return None
        return cert, key_pem


def from_files(cert_file: Path, key_file: Path, hosts: list[str], now: dt.datetime | None = None) -> Material:
    """The site's own certificate: checked (PEM, key matches, hosts covered, expiry), never modified."""
    try:
        data = cert_file.read_bytes()
        certs = x509.load_pem_x509_certificates(data)
    except (OSError, ValueError) as e:
        raise ApplyError(f"site.tls.cert_file {cert_file}: not a PEM certificate ({e})") from None
    try:
        key_pem = key_file.read_bytes()
        key = serialization.load_pem_private_key(key_pem, None)
    except (OSError, ValueError, TypeError) as e:
        # the message of a key parse error never contains key material
        raise ApplyError(f"site.tls.key_file {key_file}: not an unencrypted PEM private key "
                         f"({type(e).__name__})") from None
    leaf = certs[0]
    if key.public_key() != leaf.public_key():
        raise ApplyError(f"site.tls: the key in {key_file} does not belong to the certificate in {cert_file}")
    now = now or _now()
    notes = []
    names = cert_hosts(leaf)
    missing = [h for h in hosts if not covers(names, h)]
    if missing:
        notes.append(f"site.tls certificate {cert_file} does not cover {', '.join(missing)} (it names "
                     f"{', '.join(names) or 'no subjectAltName'}): clients will refuse it for those names")
    end = leaf.not_valid_after_utc
    if end <= now:
        notes.append(f"site.tls certificate {cert_file} EXPIRED on {end:%Y-%m-%d}: replace the files and re-run")
    elif end - RENEW_BEFORE <= now:
        notes.append(f"site.tls certificate {cert_file} expires on {end:%Y-%m-%d}: replace the files soon")
    return Material(data, key_pem, names, end, "site files", False, None, notes)
