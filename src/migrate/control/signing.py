"""Ledger signatures: Ed25519 keys the runner holds outside the database.

The hash chain shows an entry was changed, deleted or reordered — unless whoever did it
recomputed the hashes, which anyone who can write the table (and read this code) can.
A signature cannot be recomputed without the private key, and the database never holds
it: the playbook names the variable or file it comes from (``ledger.signing_key_env``,
``ledger.signing_key_file``). Each entry's signature covers its hash, and so its
content, its ``seq`` and the hash of the entry before it.

Trust comes from outside the database too: ``verify`` checks against the public key of
the configured signing key, or the key(s) in ``ledger.public_key_file`` (an auditor
needs only those). The public keys recorded in ``ledger_keys`` are for export and for
naming the key an entry claims; a key recorded there but not trusted proves nothing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from migrate.errors import SettingsError
from migrate.playbook.model import LedgerSettings

ALGORITHM = "ed25519"
_ENTRY = b"tenant-migrate ledger entry v1\n"
_HEAD = b"tenant-migrate ledger head v1\n"
_PEM = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.S)


def entry_message(digest: str) -> bytes:
    """What an entry's signature covers: its hash (which covers the rest), with a domain prefix."""
    return _ENTRY + digest.encode()


def head_message(line: str) -> bytes:
    """What a published head's signature covers: its canonical JSON without the signature."""
    return _HEAD + line.encode()


def key_id(public: Ed25519PublicKey) -> str:
    """The first 16 hex digits of SHA-256 over the raw public key: how entries name their key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class PublicKey:
    key_id: str
    key: Ed25519PublicKey
    pem: str

    @classmethod
    def of(cls, public: Ed25519PublicKey) -> PublicKey:
        pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return cls(key_id(public), public, pem.decode())

    def verify(self, message: bytes, signature: str) -> bool:
        try:
            self.key.verify(base64.b64decode(signature, validate=True), message)
        except (InvalidSignature, binascii.Error, ValueError):
            return False
        return True


class Signer:
    """The runner's private key; signs entry hashes and published heads."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public = PublicKey.of(private.public_key())

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def sign(self, message: bytes) -> str:
        return base64.b64encode(self._private.sign(message)).decode()


def generate_key() -> tuple[bytes, bytes, str]:
    """A new Ed25519 key: (private key PEM, unencrypted PKCS#8; public key PEM; key id)."""
    private = Ed25519PrivateKey.generate()
    public = PublicKey.of(private.public_key())
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return pem, public.pem.encode(), public.key_id


def signer_from_pem(data: bytes, where: str) -> Signer:
    """The signer of a PEM private key (Ed25519, unencrypted), or a SettingsError that never quotes it."""
    try:
        key = serialization.load_pem_private_key(data.strip() + b"\n", password=None)
    except (ValueError, TypeError) as exc:
        raise SettingsError(
            f"the ledger signing key is not an unencrypted PEM private key ({type(exc).__name__})",
            where=where,
            hint="migrate ledger keygen --out FILE makes one (or: openssl genpkey -algorithm ed25519)",
        ) from None  # never chain: the message of a key parser may quote the key
    if not isinstance(key, Ed25519PrivateKey):
        raise SettingsError(
            "the ledger signing key is not an Ed25519 key",
            where=where,
            hint="migrate ledger keygen --out FILE makes one (or: openssl genpkey -algorithm ed25519)",
        )
    return Signer(key)


def public_keys(data: bytes, where: str) -> tuple[PublicKey, ...]:
    """Every Ed25519 public key (PEM) in ``data``; at least one."""
    found = []
    for block in _PEM.findall(data):
        try:
            key = serialization.load_pem_public_key(block)
        except ValueError:
            raise SettingsError("a public key in it does not load", where=where) from None
        if not isinstance(key, Ed25519PublicKey):
            raise SettingsError("a public key in it is not an Ed25519 key", where=where)
        found.append(PublicKey.of(key))
    if not found:
        raise SettingsError(
            "no PEM public key in it",
            where=where,
            hint="the file 'migrate ledger keygen' writes next to the key (FILE.pub), "
            "or 'migrate ledger keys PLAYBOOK'",
        )
    return tuple(found)


def _read(path: Path, where: str, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SettingsError(f"cannot read {what} {path}: {exc.strerror}", where=where) from None


@dataclass(frozen=True)
class LedgerKeys:
    """What the playbook's ledger settings give: a signer (to write), trusted keys (to verify)."""

    signer: Signer | None
    trusted: Mapping[str, PublicKey]
    require: bool

    @property
    def configured(self) -> bool:
        return bool(self.trusted)


def ledger_keys(
    settings: LedgerSettings,
    environ: Mapping[str, str],
    *,
    resolve: Callable[[str], Path],
    where: Callable[..., str],
    need_signer: bool,
) -> LedgerKeys:
    """The keys the playbook names. ``need_signer``: a writer must have the private key if one is named.

    A reader (``ledger verify``) uses the private key when it is at hand, else the public
    key file; the private key alone is never required to verify.
    """
    signer: Signer | None = None
    if settings.signing_key_env is not None:
        var = settings.signing_key_env
        value = environ.get(var, "").strip()
        if value:
            signer = signer_from_pem(value.encode(), var)
        elif need_signer or settings.public_key_file is None:
            raise SettingsError(
                f"environment variable {var} is not set; it holds the ledger's signing key",
                where=where("ledger", "signing_key_env"),
                hint=f'export {var}="$(cat /path/to/ledger-key.pem)", or, to verify only, '
                "name the public key: ledger.public_key_file",
            )
    elif settings.signing_key_file is not None:
        path = resolve(settings.signing_key_file)
        if path.exists() or need_signer or settings.public_key_file is None:
            _refuse_if_readable_by_others(path)
            signer = signer_from_pem(
                _read(path, where("ledger", "signing_key_file"), "the signing key"), str(path)
            )
    trusted: dict[str, PublicKey] = {}
    if signer is not None:
        trusted[signer.key_id] = signer.public
    if settings.public_key_file is not None:
        path = resolve(settings.public_key_file)
        at = where("ledger", "public_key_file")
        for key in public_keys(_read(path, at, "the public key file"), f"{at} ({path})"):
            trusted[key.key_id] = key
    return LedgerKeys(signer, trusted, settings.require_signatures)


def _refuse_if_readable_by_others(path: Path) -> None:
    """A private key others may read is no secret: refuse it, as ssh does."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0
    if os.name == "posix" and mode & 0o077:
        raise SettingsError(
            f"the ledger signing key {path} is readable by other users (mode {mode:o})",
            where=str(path),
            hint=f"chmod 600 {path}",
        )
