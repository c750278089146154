"""Ed25519 keys and signatures, shared by bundles and the audit trail.

``cryptography`` is imported only when a key is used, so the registry works
without it until someone signs or verifies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigurationError, InvalidInputError

EVENT_CONTEXT = b"safegene-audit-event-v1\n"


def _ed25519() -> tuple[Any, Any]:
    try:  # an optional dependency: only signing and signed bundles need it
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise ConfigurationError("signing needs the `cryptography` package: pip install cryptography") from None
    return serialization, ed25519


def load_key(path: Path, *, private: bool) -> Any:
    ser, ed = _ed25519()
    try:
        data = path.read_bytes()
        key = (ser.load_pem_private_key(data, password=None) if private or b"PRIVATE KEY" in data
               else ser.load_pem_public_key(data))  # fmt: skip
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidInputError(f"{path}: not an unencrypted PEM {'private' if private else 'public'} key ({exc})") from None
    if not private and isinstance(key, ed.Ed25519PrivateKey):
        key = key.public_key()
    if not isinstance(key, ed.Ed25519PrivateKey if private else ed.Ed25519PublicKey):
        raise InvalidInputError(f"{path}: signatures use Ed25519 keys, this is {type(key).__name__}")
    return key


def public_hex(key: Any) -> str:
    ser, ed = _ed25519()
    public = key.public_key() if isinstance(key, ed.Ed25519PrivateKey) else key
    return str(public.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw).hex())


def sign_event(key: Any, entry_hash: str) -> tuple[str, str]:
    """(signer public key hex, signature hex) over an audit entry hash."""
    return public_hex(key), key.sign(EVENT_CONTEXT + entry_hash.encode()).hex()


def signature_ok(signer: str, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is the Ed25519 signature of ``message`` by the public key ``signer`` (hex)."""
    _, ed = _ed25519()
    from cryptography.exceptions import InvalidSignature

    try:
        ed.Ed25519PublicKey.from_public_bytes(bytes.fromhex(signer)).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def event_signature_ok(signer: str, signature: str, entry_hash: str) -> bool:
    try:
        raw = bytes.fromhex(signature)
    except ValueError:
        return False
    return signature_ok(signer, raw, EVENT_CONTEXT + entry_hash.encode())
