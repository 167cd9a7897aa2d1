"""Ed25519 keys and detached signatures for criteria feeds (PyNaCl / libsodium).

Key files are two lines of text, UTF-8::

    SafeNest feed secret key v1 publisher=<id> name=<publisher name>
    <base64 of the 32-byte Ed25519 seed>

    SafeNest feed public key v1 publisher=<id> name=<publisher name>
    <base64 of the 32-byte Ed25519 public key>

The secret key file is written with mode 0600 and refused if other users can read it. The
header names the publisher, so ``safenest feed build --key KEY`` knows whom it signs for and a
pinned public key knows whose feeds it accepts. A key's id is ``ed25519:`` and the first 16 hex
digits of the SHA-256 of the raw public key; manifests carry it in ``publisher.key_id``.

The signature file ``manifest.json.sig`` is the base64 of the 64-byte Ed25519 signature of the
exact bytes of ``manifest.json``, on one line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import nacl.exceptions
import nacl.signing
import nacl.utils

from agent.feed.format import PUBLISHER_ID_RE, SIGNATURE_NAME, FeedError

__all__ = [
    "SecretKey",
    "PublicKey",
    "KeyFileError",
    "generate_key",
    "write_keypair",
    "load_secret_key",
    "load_public_key",
    "key_id_of",
    "sign",
    "verify_signature",
    "public_path_for",
]

_HEADER = re.compile(r"SafeNest feed (secret|public) key v1 publisher=(\S+)(?: name=(.+))?")
MAX_KEY_FILE_BYTES = 4096
MAX_SIGNATURE_BYTES = 1024


class KeyFileError(FeedError):
    def __init__(self, message: str) -> None:
        super().__init__(message, "bad_key")


def key_id_of(raw_public: bytes) -> str:
    return "ed25519:" + hashlib.sha256(raw_public).hexdigest()[:16]


def _check_publisher(publisher_id: str, publisher_name: str) -> None:
    if not PUBLISHER_ID_RE.fullmatch(publisher_id or ""):
        raise ValueError(
            f"bad publisher id {publisher_id!r}: use 1 to 64 of [a-z0-9._-], starting with a letter or digit"
        )
    name = publisher_name or ""
    if not name.strip() or len(name) > 200 or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise ValueError(f"bad publisher name {publisher_name!r}: one line of 1 to 200 characters")


@dataclass(frozen=True)
class PublicKey:
    publisher_id: str
    publisher_name: str
    raw: bytes  # 32 bytes

    @property
    def key_id(self) -> str:
        return key_id_of(self.raw)

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            nacl.signing.VerifyKey(self.raw).verify(message, signature)
        except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
            return False
        return True

    def text(self) -> str:
        return _key_text("public", self.publisher_id, self.publisher_name, self.raw)


@dataclass(frozen=True, repr=False)
class SecretKey:
    publisher_id: str
    publisher_name: str
    seed: bytes  # 32 bytes

    def __repr__(self) -> str:  # never print the seed
        return f"SecretKey(publisher_id={self.publisher_id!r}, key_id={self.key_id!r})"

    @property
    def public(self) -> PublicKey:
        raw = bytes(nacl.signing.SigningKey(self.seed).verify_key)
        return PublicKey(self.publisher_id, self.publisher_name, raw)

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def sign(self, message: bytes) -> bytes:
        """The 64-byte detached signature of ``message``."""
        return nacl.signing.SigningKey(self.seed).sign(message).signature

    def text(self) -> str:
        return _key_text("secret", self.publisher_id, self.publisher_name, self.seed)


def _key_text(kind: str, publisher_id: str, publisher_name: str, raw: bytes) -> str:
    return (
        f"SafeNest feed {kind} key v1 publisher={publisher_id} name={publisher_name}\n"
        f"{base64.b64encode(raw).decode('ascii')}\n"
    )


def generate_key(publisher_id: str, publisher_name: str) -> SecretKey:
    _check_publisher(publisher_id, publisher_name)
    seed = nacl.utils.random(32)
    return SecretKey(publisher_id, publisher_name, seed)


def public_path_for(secret_path: str | Path) -> Path:
    p = Path(secret_path)
    return p.with_name(p.name + ".pub")


def _write_new(path: Path, text: str, mode: int, force: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (0 if force else os.O_EXCL)
    if force and path.exists():
        path.unlink()  # a fresh inode, so an old file's wider mode does not survive
    fd = os.open(path, flags, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def write_keypair(secret_path: str | Path, key: SecretKey, force: bool = False) -> tuple[Path, Path]:
    """Write KEY (mode 0600) and KEY.pub (mode 0644). Refuses to overwrite unless ``force``."""
    secret_path = Path(secret_path)
    public_path = public_path_for(secret_path)
    if not force:
        for p in (secret_path, public_path):
            if p.exists():
                raise FileExistsError(f"{p} already exists (keep it, or pass --force to replace it)")
    _write_new(secret_path, key.text(), 0o600, force)
    _write_new(public_path, key.public.text(), 0o644, force)
    return secret_path, public_path


def _read_key_file(path: Path, kind: str) -> tuple[str, str, bytes]:
    try:
        data = path.read_bytes()[: MAX_KEY_FILE_BYTES + 1]
    except OSError as exc:
        raise KeyFileError(f"cannot read {kind} key {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyFileError(f"{path} is not a SafeNest feed {kind} key: too large")
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise KeyFileError(f"{path} is not a SafeNest feed {kind} key: not UTF-8 text") from None
    lines = [ln.strip() for ln in lines if ln.strip()]
    m = _HEADER.fullmatch(lines[0]) if lines else None
    if m is None or len(lines) != 2:
        raise KeyFileError(
            f'{path} is not a SafeNest feed {kind} key: expected a line "SafeNest feed {kind} key v1 '
            'publisher=ID name=NAME" and a line of base64'
        )
    if m.group(1) != kind:
        hint = " (give the .pub file)" if kind == "public" else " (give the secret key, not the .pub file)"
        raise KeyFileError(f"{path} is a {m.group(1)} key, not a {kind} key{hint}")
    publisher_id, publisher_name = m.group(2), (m.group(3) or m.group(2)).strip()
    try:
        _check_publisher(publisher_id, publisher_name)
    except ValueError as exc:
        raise KeyFileError(f"{path}: {exc}") from None
    try:
        raw = base64.b64decode(lines[1], validate=True)
    except binascii.Error:
        raw = b""
    if len(raw) != 32:
        raise KeyFileError(f"{path}: the key line is not the base64 of 32 bytes")
    return publisher_id, publisher_name, raw


def load_secret_key(path: str | Path) -> SecretKey:
    """Read a secret key; refuses one that group or others may read (like ssh does)."""
    path = Path(path)
    publisher_id, publisher_name, seed = _read_key_file(path, "secret")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(
            f"{path} can be read by other users (mode {mode:04o}): run chmod 600 {path}"
        )
    return SecretKey(publisher_id, publisher_name, seed)


def load_public_key(path: str | Path) -> PublicKey:
    publisher_id, publisher_name, raw = _read_key_file(Path(path), "public")
    return PublicKey(publisher_id, publisher_name, raw)


def sign(key: SecretKey, manifest_bytes: bytes) -> bytes:
    """The content of ``manifest.json.sig`` for these exact manifest bytes."""
    return base64.b64encode(key.sign(manifest_bytes)) + b"\n"


def _decode_signature(sig_file: bytes) -> bytes:
    bad = FeedError(
        f"bad signature: {SIGNATURE_NAME} is not one line of base64 holding a 64-byte Ed25519 signature",
        "bad_signature",
    )
    if len(sig_file) > MAX_SIGNATURE_BYTES:
        raise bad
    try:
        raw = base64.b64decode(sig_file.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise bad from None
    if len(raw) != 64:
        raise bad
    return raw


def verify_signature(key: PublicKey, manifest_bytes: bytes, sig_file: bytes) -> None:
    """Raise :class:`FeedError` (``bad_signature``) unless ``sig_file`` signs ``manifest_bytes``."""
    raw = _decode_signature(sig_file)
    if not key.verify(manifest_bytes, raw):
        raise FeedError(
            f"bad signature: {SIGNATURE_NAME} does not match manifest.json under the pinned key "
            f"{key.key_id} of publisher {key.publisher_id} (the manifest was changed after signing, "
            "or signed with another key)",
            "bad_signature",
        )
