"""Keys and signatures: ECDSA P-256 over SHA-256, DER, base64 — what ``cosign sign-blob --key`` writes.

``openssl dgst -sha256 -verify key.pub -signature <(base64 -d sig)`` and ``cosign verify-blob`` accept them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..errors import UsageError, VerifyError

PASSWORD_ENV = "HYDRA_BUNDLE_KEY_PASSWORD"


def _password() -> bytes | None:
    pw = os.environ.get(PASSWORD_ENV)
    return pw.encode() if pw else None


def keygen(prefix: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write PREFIX.key (PEM PKCS#8, encrypted when HYDRA_BUNDLE_KEY_PASSWORD is set) and PREFIX.pub."""
    prefix = Path(prefix)
    key_path, pub_path = prefix.with_name(prefix.name + ".key"), prefix.with_name(prefix.name + ".pub")
    for p in (key_path, pub_path):
        if p.exists():
            raise UsageError(f"{p} already exists; refusing to overwrite a key")
    key = ec.generate_private_key(ec.SECP256R1())
    pw = _password()
    enc = serialization.BestAvailableEncryption(pw) if pw else serialization.NoEncryption()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return key_path, pub_path


def load_private_key(path: str | os.PathLike[str]) -> ec.EllipticCurvePrivateKey:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read signing key {path}: {e.strerror}") from e
    try:
        key = serialization.load_pem_private_key(data, password=_password())
    except TypeError as e:
        raise UsageError(f"{path}: key is encrypted; set {PASSWORD_ENV}") from e
    except ValueError as e:
        raise UsageError(f"{path}: not a usable PEM private key (wrong {PASSWORD_ENV}?)") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise UsageError(f"{path}: signing key must be ECDSA P-256")
    return key


def load_public_key(path: str | os.PathLike[str]) -> ec.EllipticCurvePublicKey:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read public key {path}: {e.strerror}") from e
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as e:
        raise UsageError(f"{path}: not a PEM public key") from e
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise UsageError(f"{path}: public key must be ECDSA P-256")
    return key


def key_id(key: ec.EllipticCurvePublicKey) -> str:
    """sha256 of the DER SubjectPublicKeyInfo: a stable name for a key in logs and history."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def sign(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """base64(DER ECDSA signature) of ``data``."""
    return base64.b64encode(key.sign(data, ec.ECDSA(hashes.SHA256())))


def verify(keys: list[ec.EllipticCurvePublicKey], data: bytes, sig_b64: bytes) -> ec.EllipticCurvePublicKey:
    """Return the trusted key that signed ``data``; raise VerifyError if none did."""
    try:
        der = base64.b64decode(sig_b64.strip(), validate=True)
    except (binascii.Error, ValueError) as e:
        raise VerifyError("bad-signature", "signature member is not base64") from e
    if base64.b64encode(der) != sig_b64.strip():  # unused low bits of the last digit: no other spelling passes
        raise VerifyError("bad-signature", "signature member is not canonical base64")
    if not keys:
        raise VerifyError("no-trusted-keys", "no trusted public key configured")
    for k in keys:
        try:
            k.verify(der, data, ec.ECDSA(hashes.SHA256()))
            return k
        except InvalidSignature:
            continue
    raise VerifyError("bad-signature", "index signature does not verify against any trusted key")
