"""Ed25519 keys and detached signatures of criteria feeds: real key files, real signatures."""

from __future__ import annotations

import base64
import hashlib
import os
import stat

import pytest

from agent.feed.format import FeedError
from agent.feed.sign import (
    KeyFileError,
    PublicKey,
    SecretKey,
    generate_key,
    key_id_of,
    load_public_key,
    load_secret_key,
    sign,
    verify_signature,
    write_keypair,
)

MANIFEST = '{"format": 1, "publisher": {"name": "Sở GD&ĐT"}}\n'.encode()


@pytest.fixture
def keypair(tmp_path):
    key = generate_key("sgddt.example.vn", "Sở Giáo dục và Đào tạo Hà Nội")
    secret_path, public_path = write_keypair(tmp_path / "feed.key", key)
    return key, secret_path, public_path


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_keygen_writes_0600_secret_and_public_key_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        key = generate_key("ngo.example.org", "An NGO")
        secret_path, public_path = write_keypair(tmp_path / "k", key)
    finally:
        os.umask(old)
    assert secret_path == tmp_path / "k" and public_path == tmp_path / "k.pub"
    assert mode(secret_path) == 0o600
    assert mode(public_path) == 0o644
    secret_lines = secret_path.read_text().splitlines()
    public_lines = public_path.read_text().splitlines()
    assert secret_lines[0] == "SafeNest feed secret key v1 publisher=ngo.example.org name=An NGO"
    assert public_lines[0] == "SafeNest feed public key v1 publisher=ngo.example.org name=An NGO"
    assert base64.b64decode(secret_lines[1]) == key.seed and len(key.seed) == 32
    assert base64.b64decode(public_lines[1]) == key.public.raw
    assert key.seed != key.public.raw
    assert "seed" not in repr(key) and secret_lines[1] not in repr(key)


def test_keys_load_back_with_their_publisher(keypair):
    key, secret_path, public_path = keypair
    loaded = load_secret_key(secret_path)
    assert loaded == key
    pub = load_public_key(public_path)
    assert pub == key.public
    assert pub.publisher_id == "sgddt.example.vn"
    assert pub.publisher_name == "Sở Giáo dục và Đào tạo Hà Nội"
    assert pub.key_id == "ed25519:" + hashlib.sha256(pub.raw).hexdigest()[:16]
    assert pub.key_id == key.key_id == key_id_of(pub.raw)


def test_two_keys_differ(tmp_path):
    a, b = generate_key("a.example", "A"), generate_key("a.example", "A")
    assert a.seed != b.seed and a.key_id != b.key_id


def test_keygen_refuses_to_overwrite_unless_forced(keypair):
    key, secret_path, public_path = keypair
    before = secret_path.read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        write_keypair(secret_path, generate_key("x.example", "X"))
    assert secret_path.read_bytes() == before
    # Only the .pub left behind also blocks a new key (it would be a mismatched pair).
    secret_path.unlink()
    with pytest.raises(FileExistsError, match=r"feed\.key\.pub already exists"):
        write_keypair(secret_path, generate_key("x.example", "X"))
    os.chmod(public_path, 0o666)
    new = generate_key("x.example", "X")
    write_keypair(secret_path, new, force=True)
    assert load_secret_key(secret_path) == new
    assert load_public_key(public_path) == new.public
    assert mode(public_path) == 0o644


def test_secret_key_readable_by_others_is_refused(keypair):
    _, secret_path, _ = keypair
    os.chmod(secret_path, 0o644)
    with pytest.raises(KeyFileError) as info:
        load_secret_key(secret_path)
    assert str(info.value) == (
        f"{secret_path} can be read by other users (mode 0644): run chmod 600 {secret_path}"
    )
    assert info.value.reason == "bad_key"


def test_wrong_kind_of_key_file(keypair):
    _, secret_path, public_path = keypair
    with pytest.raises(KeyFileError, match=r"is a public key, not a secret key \(give the secret key"):
        os.chmod(public_path, 0o600)
        load_secret_key(public_path)
    with pytest.raises(KeyFileError, match=r"is a secret key, not a public key \(give the \.pub file\)"):
        load_public_key(secret_path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "is not a SafeNest feed public key"),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG... me@host\n", "is not a SafeNest feed public key"),
        ("SafeNest feed public key v1 publisher=a.example name=A\n", "is not a SafeNest feed public key"),
        ("SafeNest feed public key v1 publisher=a.example name=A\nAAAA\n", "the key line is not the base64 of 32 bytes"),
        ("SafeNest feed public key v1 publisher=a.example name=A\n!!!notbase64!!!\n", "the key line is not the base64 of 32 bytes"),
        ("SafeNest feed public key v1 publisher=Bad_ID name=A\n" + base64.b64encode(bytes(32)).decode() + "\n", "bad publisher id"),
    ],
)
def test_malformed_public_key_files(tmp_path, text, message):
    path = tmp_path / "k.pub"
    path.write_text(text)
    with pytest.raises(KeyFileError, match=message):
        load_public_key(path)


def test_missing_key_file(tmp_path):
    with pytest.raises(KeyFileError, match="cannot read public key .*No such file"):
        load_public_key(tmp_path / "nope.pub")
    with pytest.raises(KeyFileError, match="cannot read secret key .*No such file"):
        load_secret_key(tmp_path / "nope")


@pytest.mark.parametrize("pid", ["", "Upper", "-lead", "a" * 65, "has space", "vi.ệt"])
def test_bad_publisher_ids_are_refused(pid):
    with pytest.raises(ValueError, match="bad publisher id"):
        generate_key(pid, "Name")


def test_bad_publisher_names_are_refused():
    with pytest.raises(ValueError, match="bad publisher name"):
        generate_key("a.example", "two\nlines")
    with pytest.raises(ValueError, match="bad publisher name"):
        generate_key("a.example", " ")


# ---------------------------------------------------------------- signatures


def test_rfc8032_test_vector():
    # RFC 8032 section 7.1, TEST 1: proves this is plain Ed25519 that any implementation checks.
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    key = SecretKey("rfc.example", "RFC 8032", seed)
    assert key.public.raw.hex() == "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    assert key.sign(b"").hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065"
        "224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )


def test_sign_verify_roundtrip(keypair):
    key, _, public_path = keypair
    sig = sign(key, MANIFEST)
    assert sig.endswith(b"\n") and len(sig) == 89 and b"\n" not in sig[:-1]
    assert len(base64.b64decode(sig)) == 64
    verify_signature(load_public_key(public_path), MANIFEST, sig)
    verify_signature(key.public, MANIFEST, sig.strip())  # the newline is optional


def test_tampered_manifest_fails(keypair):
    key, _, _ = keypair
    sig = sign(key, MANIFEST)
    for i in (0, len(MANIFEST) // 2, len(MANIFEST) - 1):
        tampered = bytearray(MANIFEST)
        tampered[i] ^= 0x01
        with pytest.raises(FeedError) as info:
            verify_signature(key.public, bytes(tampered), sig)
        assert info.value.reason == "bad_signature"
        assert str(info.value).startswith(
            f"bad signature: manifest.json.sig does not match manifest.json under the pinned key {key.key_id} of publisher sgddt.example.vn"
        )
    # Re-indenting is tampering too: the signature covers the exact bytes.
    with pytest.raises(FeedError, match="bad signature"):
        verify_signature(key.public, MANIFEST.replace(b", ", b",  "), sig)
    with pytest.raises(FeedError, match="bad signature"):
        verify_signature(key.public, MANIFEST + b"\n", sig)


def test_wrong_key_fails(keypair):
    key, _, _ = keypair
    other = generate_key("sgddt.example.vn", "Sở Giáo dục và Đào tạo Hà Nội")
    with pytest.raises(FeedError) as info:
        verify_signature(other.public, MANIFEST, sign(key, MANIFEST))
    assert info.value.reason == "bad_signature"
    assert other.key_id in str(info.value)
    # A public key with the same header but different bytes is not the same key.
    impostor = PublicKey(key.publisher_id, key.publisher_name, other.public.raw)
    assert not impostor.verify(MANIFEST, key.sign(MANIFEST))


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: s[:40],  # truncated
        lambda s: s[:-2] + b"\n",  # one base64 character short
        lambda s: base64.b64encode(base64.b64decode(s)[:63]),  # 63 bytes
        lambda s: base64.b64encode(base64.b64decode(s) + b"\0"),  # 65 bytes
        lambda s: b"",
        lambda s: s.replace(b"=", b"*"),
        lambda s: s * 20,  # too long
        lambda s: base64.b64decode(s),  # raw bytes instead of base64
    ],
    ids=["truncated", "short", "63", "65", "empty", "bad-char", "huge", "raw"],
)
def test_malformed_signature_file(keypair, mangle):
    key, _, _ = keypair
    sig = mangle(sign(key, MANIFEST))
    with pytest.raises(FeedError) as info:
        verify_signature(key.public, MANIFEST, sig)
    assert info.value.reason == "bad_signature"
    assert str(info.value) == (
        "bad signature: manifest.json.sig is not one line of base64 holding a 64-byte Ed25519 signature"
    )


def test_signature_of_a_truncated_message_does_not_verify_the_whole(keypair):
    key, _, _ = keypair
    sig = sign(key, MANIFEST[:10])
    with pytest.raises(FeedError, match="does not match"):
        verify_signature(key.public, MANIFEST, sig)
