"""Tests for ledger.note (signed notes, cosignatures) and ledger.checkpoint."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.checkpoint import (
    Checkpoint,
    CheckpointError,
    open_checkpoint,
    parse_checkpoint_body,
    sign_checkpoint,
)
from ledger.merkle import EMPTY_ROOT
from ledger.note import (
    EM_DASH,
    MAX_SIGNATURES,
    SIG_COSIGNATURE_V1,
    SIG_ED25519,
    InvalidKeyError,
    InvalidSignatureError,
    MalformedNoteError,
    NoteError,
    Signature,
    SignerKey,
    UnverifiedNoteError,
    Verifier,
    add_signature,
    cosignature_line,
    cosignature_message,
    cosignature_timestamp,
    is_valid_key_name,
    key_hash,
    open_note,
    parse_note,
    parse_signature_line,
    sign_note,
    signature_line,
    verify_cosignature_line,
)

# --------------------------------------------------------------------------- vectors
# Published test data (used as data only): golang.org/x/mod/sumdb/note docs and
# tests, the c2sp.org/signed-note example, and transparency-dev/formats.

GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
)
PETER_SIG = (
    f"{EM_DASH} PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    f"{EM_DASH} EnochRoot "
    "rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
)
SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = (
    "This is an example message.\n\n"
    f"{EM_DASH} example.com/foo "
    "Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
)
# A type 0x01 key whose base64 contains '+', and a native type 0x04 cosigner key.
PLUS_VKEY = "TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6"
COSIGNER_VKEY = "remora.n621.de+da77ade7+BOvN63jn/bLvkieywe8R6UYAtVtNbZpXh34x7onlmtw2"
COSIG_PAYLOAD = (
    "ZGhGuQAAAABm/qTPeyKXD+R2rzyQsxPiP8mXum7qq/iF0u4vanlqJyocWODBt97w9uL+8qT7S5gxEHWWOworDcFiEBYJXORmnFBOBA=="
)
NOT_A_COSIG_PAYLOAD = (
    "eQjRQm6eSKzFoiYalgwCPXu2y3ijtg68is9M46JKxuZB+dRfTmeQeDBoXnvxZx2ugnkyV+MUMLXpWs1hPb/W/4xkNQY="
)
SPEC_CHECKPOINT_BODY = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"

LOG_NAME = "dfg.example/consent-log"
LOG_KEY = Ed25519PrivateKey.from_private_bytes(bytes([0x10]) * 32)
WITNESS_NAME = "witness.example/w1"
WITNESS_KEY = Ed25519PrivateKey.from_private_bytes(bytes([0x20]) * 32)
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes([0x30]) * 32)


def _pub(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


LOG_VERIFIER = Verifier(LOG_NAME, _pub(LOG_KEY))
WITNESS_VERIFIER = Verifier(WITNESS_NAME, _pub(WITNESS_KEY), SIG_COSIGNATURE_V1)


def _replace_sig(line: str, payload: bytes) -> str:
    name = line.split(" ")[1]
    return f"{EM_DASH} {name} {base64.b64encode(payload).decode()}\n"


def _raw(line: str) -> bytes:
    return base64.b64decode(line.rstrip("\n").split(" ")[2])


# --------------------------------------------------------------------------- keys


def test_go_signer_and_verifier_keys_known_answer() -> None:
    signer = SignerKey.from_string(GO_SKEY)
    assert signer.name == "PeterNeumann"
    assert signer.sig_type == SIG_ED25519
    assert signer.to_string() == GO_SKEY
    verifier = signer.verifier()
    assert verifier.to_string() == GO_VKEY
    assert Verifier.from_string(GO_VKEY) == verifier
    assert verifier.key_hash.hex() == "c74f20a3"
    assert key_hash("PeterNeumann", verifier.public_key) == bytes.fromhex("c74f20a3")
    expected = hashlib.sha256(b"PeterNeumann\n\x01" + verifier.public_key).digest()[:4]
    assert verifier.key_hash == expected


@pytest.mark.parametrize("vkey", [GO_VKEY, ENOCH_VKEY, SPEC_VKEY, PLUS_VKEY, COSIGNER_VKEY])
def test_verifier_key_string_round_trip(vkey: str) -> None:
    verifier = Verifier.from_string(vkey)
    assert verifier.to_string() == vkey
    assert Verifier.from_string(verifier.to_string()) == verifier


def test_cosigner_key_hash_uses_type_0x04() -> None:
    verifier = Verifier.from_string(COSIGNER_VKEY)
    assert verifier.sig_type == SIG_COSIGNATURE_V1
    assert verifier.key_hash.hex() == "da77ade7"
    as_plain = Verifier(verifier.name, verifier.public_key, SIG_ED25519)
    assert as_plain.key_hash != verifier.key_hash


def _manglings(key: str) -> list[str]:
    out = [key[i:j] for i in range(len(key) + 1) for j in range(i + 1, len(key) + 1)]
    out = [k for k in out if k != key]
    out += [key[:i] + chr(ord(key[i]) + 1) + key[i + 1 :] for i in range(len(key))]
    return out


def test_mangled_key_strings_are_rejected() -> None:
    for bad in _manglings(GO_VKEY):
        with pytest.raises(InvalidKeyError):
            Verifier.from_string(bad)
    for bad in _manglings(GO_SKEY):
        with pytest.raises(InvalidKeyError):
            SignerKey.from_string(bad)


@pytest.mark.parametrize(
    "vkey",
    [
        "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # uppercase hex
        "PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
        "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # unknown type
        "PeterNeumann+00000000+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  # wrong hash
        "bananas.example+12345678",
        "x+12345678+THIS_IS_NOT_BASE64!",
        "",
    ],
)
def test_bad_verifier_keys(vkey: str) -> None:
    with pytest.raises(InvalidKeyError):
        Verifier.from_string(vkey)


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("example.com/log", True),
        ("PeterNeumann", True),
        ("oid/1.3.6.1.4.1", True),
        ("ünïcode", True),
        ("", False),
        ("has space", False),
        ("has+plus", False),
        ("tab\there", False),
        ("nbsp\u00a0here", False),
        ("em\u2003space", False),
        ("line\u2028sep", False),
        ("ctl\x01", False),
        ("lone\ud800surrogate", False),
    ],
)
def test_key_name_rules(name: str, ok: bool) -> None:
    assert is_valid_key_name(name) is ok
    if not ok:
        with pytest.raises(InvalidKeyError):
            Verifier(name, _pub(LOG_KEY))
        with pytest.raises(InvalidKeyError):
            sign_note("text\n", name, LOG_KEY)


def test_signer_key_for_cosigner_round_trip() -> None:
    signer = SignerKey(WITNESS_NAME, WITNESS_KEY, SIG_COSIGNATURE_V1)
    parsed = SignerKey.from_string(signer.to_string())
    assert parsed.sig_type == SIG_COSIGNATURE_V1
    assert parsed.verifier() == WITNESS_VERIFIER
    assert "private_key" not in repr(signer)


# --------------------------------------------------------------------------- notes


def test_go_signed_note_known_answer() -> None:
    signer = SignerKey.from_string(GO_SKEY)
    note = sign_note(GO_TEXT, signer.name, signer.private_key)
    assert note == GO_TEXT + "\n" + PETER_SIG
    text, verified = open_note(note, [Verifier.from_string(GO_VKEY)])
    assert text == GO_TEXT
    assert [s.line() for s in verified] == [PETER_SIG]


def test_spec_note_known_answer() -> None:
    text, verified = open_note(SPEC_NOTE, [Verifier.from_string(SPEC_VKEY)])
    assert text == "This is an example message.\n"
    assert [s.name for s in verified] == ["example.com/foo"]


def test_unknown_keys_are_ignored_or_reported() -> None:
    note = GO_TEXT + "\n" + PETER_SIG + ENOCH_SIG
    peter, enoch = Verifier.from_string(GO_VKEY), Verifier.from_string(ENOCH_VKEY)
    assert [s.name for s in open_note(note, [peter])[1]] == ["PeterNeumann"]
    assert [s.name for s in open_note(note, [enoch])[1]] == ["EnochRoot"]
    assert [s.name for s in open_note(note, [peter, enoch])[1]] == ["PeterNeumann", "EnochRoot"]
    with pytest.raises(UnverifiedNoteError) as info:
        open_note(note, [])
    assert [s.name for s in info.value.unknown] == ["PeterNeumann", "EnochRoot"]
    # Same name but a different key: unknown, not a bad signature.
    impostor = Verifier("PeterNeumann", _pub(OTHER_KEY))
    with pytest.raises(UnverifiedNoteError):
        open_note(GO_TEXT + "\n" + PETER_SIG, [impostor])
    # Same key but a different name: unknown too.
    renamed = Verifier("PeterNeumann2", Verifier.from_string(GO_VKEY).public_key)
    with pytest.raises(UnverifiedNoteError):
        open_note(GO_TEXT + "\n" + PETER_SIG, [renamed])


def test_round_trip_and_tampering() -> None:
    text = "line one\n\nline three after a blank line\n"
    note = sign_note(text, LOG_NAME, LOG_KEY)
    assert parse_note(note)[0] == text
    assert open_note(note, [LOG_VERIFIER])[0] == text

    tampered_text = note.replace("line one", "line 1")
    with pytest.raises(InvalidSignatureError) as info:
        open_note(tampered_text, [LOG_VERIFIER])
    assert info.value.signature.name == LOG_NAME

    line = note[len(text) + 1 :]
    raw = bytearray(_raw(line))
    raw[-1] ^= 0x01
    with pytest.raises(InvalidSignatureError):
        open_note(text + "\n" + _replace_sig(line, bytes(raw)), [LOG_VERIFIER])
    raw = bytearray(_raw(line))
    raw[0] ^= 0x01  # the key hash: now it is simply someone else's signature
    with pytest.raises(UnverifiedNoteError):
        open_note(text + "\n" + _replace_sig(line, bytes(raw)), [LOG_VERIFIER])
    with pytest.raises(InvalidSignatureError):  # a truncated signature from a known key
        open_note(text + "\n" + _replace_sig(line, _raw(line)[:-1]), [LOG_VERIFIER])


@pytest.mark.parametrize(
    ("note", "why"),
    [
        (GO_TEXT + "\n" + PETER_SIG.replace(EM_DASH, "-"), "hyphen instead of em dash"),
        (GO_TEXT + "\n" + PETER_SIG.replace(EM_DASH, "\u2013"), "en dash instead of em dash"),
        (GO_TEXT + "\n" + PETER_SIG.replace(EM_DASH + " ", EM_DASH), "no space after dash"),
        (GO_TEXT + "\n" + PETER_SIG.replace(" x08", "  x08"), "double space"),
        (GO_TEXT + PETER_SIG, "missing blank line"),
        (GO_TEXT + "\n" + PETER_SIG[:-1], "missing final newline"),
        (GO_TEXT + "\n" + PETER_SIG + "\n", "trailing blank line"),
        (GO_TEXT + "\n", "no signatures"),
        (GO_TEXT + "\n" + PETER_SIG + PETER_SIG, "duplicate signature"),
        (GO_TEXT + "\n" + PETER_SIG.replace("AM=", "AN="), "non-canonical base64"),
        (GO_TEXT + "\n" + PETER_SIG.replace("AM=", "AM"), "missing padding"),
        (GO_TEXT + "\n" + PETER_SIG.replace("x08go", "x08g!"), "bad base64"),
        (GO_TEXT + "\n" + f"{EM_DASH} PeterNeumann AAAA\n", "signature too short"),
        ("bad\rtext\n\n" + PETER_SIG, "control character"),
        (GO_TEXT.replace("\n", "\r\n") + "\n" + PETER_SIG, "CRLF line endings"),
        ("no final newline in text\n" + PETER_SIG, "text glued to signatures"),
        ("", "empty"),
    ],
)
def test_malformed_notes_are_rejected(note: str, why: str) -> None:
    with pytest.raises(MalformedNoteError):
        open_note(note, [Verifier.from_string(GO_VKEY)])


def test_too_many_signatures() -> None:
    keys = [Ed25519PrivateKey.from_private_bytes(bytes([i]) * 32) for i in range(MAX_SIGNATURES + 1)]
    text = "hello\n"
    lines = [signature_line(text, f"k{i}", key) for i, key in enumerate(keys)]
    note = text + "\n" + "".join(lines[:MAX_SIGNATURES])
    assert len(open_note(note, [Verifier("k0", _pub(keys[0]))])[1]) == 1
    with pytest.raises(MalformedNoteError, match="more than"):
        parse_note(note + lines[-1])
    with pytest.raises(MalformedNoteError, match="more than"):
        add_signature(note, lines[-1])


@pytest.mark.parametrize("text", ["no newline", "", "ctl\x07\n", "cr\r\n", 42])
def test_sign_note_rejects_bad_text(text: object) -> None:
    with pytest.raises(MalformedNoteError):
        sign_note(text, LOG_NAME, LOG_KEY)  # type: ignore[arg-type]


def test_parse_signature_line() -> None:
    sig = parse_signature_line(PETER_SIG)
    assert sig == parse_signature_line(PETER_SIG.rstrip("\n"))
    assert sig.name == "PeterNeumann" and sig.key_hash.hex() == "c74f20a3"
    assert len(sig.signature) == 64
    assert sig.line() == PETER_SIG
    for bad in [PETER_SIG + "\n", PETER_SIG[1:], "— a b c", "— a+b QUJDREU="]:
        with pytest.raises(MalformedNoteError):
            parse_signature_line(bad)


def test_add_signature_appends_and_replaces() -> None:
    note = GO_TEXT + "\n" + PETER_SIG
    both = add_signature(note, ENOCH_SIG)
    assert both == GO_TEXT + "\n" + PETER_SIG + ENOCH_SIG
    assert add_signature(both, parse_signature_line(ENOCH_SIG)) == both  # replaced, not doubled
    peter, enoch = Verifier.from_string(GO_VKEY), Verifier.from_string(ENOCH_VKEY)
    assert len(open_note(both, [peter, enoch])[1]) == 2
    with pytest.raises(MalformedNoteError):
        add_signature(GO_TEXT, ENOCH_SIG)  # not a signed note
    with pytest.raises(MalformedNoteError):
        add_signature(note, "- EnochRoot AAAAAAA=")


def test_ambiguous_verifiers_are_refused() -> None:
    a = Verifier("same", _pub(LOG_KEY))
    with pytest.raises(NoteError, match="two different verifiers"):
        # Same name and hash but a different key cannot happen honestly; fake it.
        open_note(GO_TEXT + "\n" + PETER_SIG, [a, _CollidingVerifier("same", _pub(OTHER_KEY))])
    assert open_note(sign_note("x\n", "same", LOG_KEY), [a, a])[0] == "x\n"


class _CollidingVerifier(Verifier):
    """A verifier lying about its key hash, to exercise the ambiguity check."""

    @property
    def key_hash(self) -> bytes:
        return key_hash(self.name, _pub(LOG_KEY))


note_text = st.lists(
    st.text(alphabet=st.characters(min_codepoint=0x20, exclude_categories=["Cs"]), max_size=30),
    min_size=1,
    max_size=5,
).map(lambda lines: "\n".join(lines) + "\n")
key_names = st.text(
    alphabet=st.characters(min_codepoint=0x21, exclude_categories=["Cs", "Zs", "Zl", "Zp"]),
    min_size=1,
    max_size=20,
).filter(is_valid_key_name)


@settings(max_examples=60, deadline=None)
@given(text=note_text, name=key_names, seed=st.binary(min_size=32, max_size=32))
def test_sign_open_round_trip_property(text: str, name: str, seed: bytes) -> None:
    key = Ed25519PrivateKey.from_private_bytes(seed)
    verifier = Verifier(name, _pub(key))
    assert Verifier.from_string(verifier.to_string()) == verifier
    assert SignerKey.from_string(SignerKey(name, key).to_string()).verifier() == verifier
    note = sign_note(text, name, key)
    opened, verified = open_note(note, [verifier])
    assert opened == text
    assert [s.name for s in verified] == [name]


# --------------------------------------------------------------------------- cosignatures


def test_cosignature_payload_known_answer() -> None:
    raw = base64.b64decode(COSIG_PAYLOAD)
    sig = Signature("witness.example", raw[:4], raw[4:])
    assert cosignature_timestamp(sig) == 1727964367
    wrong = base64.b64decode(NOT_A_COSIG_PAYLOAD)
    with pytest.raises(MalformedNoteError):
        cosignature_timestamp(Signature("x", wrong[:4], wrong[4:]))


def test_cosignature_message_layout() -> None:
    assert cosignature_message(SPEC_CHECKPOINT_BODY, 1679315147) == (
        b"cosignature/v1\ntime 1679315147\n" + SPEC_CHECKPOINT_BODY.encode()
    )
    with pytest.raises(NoteError):
        cosignature_message(SPEC_CHECKPOINT_BODY, -1)
    with pytest.raises(NoteError):
        cosignature_message(SPEC_CHECKPOINT_BODY, 1 << 63)


def test_cosignature_round_trip() -> None:
    cp = Checkpoint(LOG_NAME, 7, hashlib.sha256(b"root").digest())
    body = cp.body()
    timestamp = 1_700_000_000
    line = cosignature_line(body, WITNESS_NAME, WITNESS_KEY, timestamp)
    sig = parse_signature_line(line)
    assert sig.key_hash == WITNESS_VERIFIER.key_hash
    assert sig.key_hash == hashlib.sha256(WITNESS_NAME.encode() + b"\n\x04" + _pub(WITNESS_KEY)).digest()[:4]
    assert sig.signature[:8] == timestamp.to_bytes(8, "big")
    assert cosignature_timestamp(sig) == timestamp
    # The Ed25519 signature is over the documented message, checked independently.
    WITNESS_KEY.public_key().verify(sig.signature[8:], b"cosignature/v1\ntime 1700000000\n" + body.encode())
    assert verify_cosignature_line(body, line, WITNESS_VERIFIER) == timestamp

    note = add_signature(sign_checkpoint(cp, LOG_NAME, LOG_KEY), line)
    text, verified = open_note(note, [LOG_VERIFIER, WITNESS_VERIFIER])
    assert text == body
    assert [s.name for s in verified] == [LOG_NAME, WITNESS_NAME]
    assert cosignature_timestamp(verified[1]) == timestamp
    # The log alone still opens the cosigned checkpoint; the cosignature is just unknown.
    assert open_checkpoint(note, LOG_VERIFIER) == cp
    # A later cosignature by the same witness replaces the earlier one.
    later = cosignature_line(body, WITNESS_NAME, WITNESS_KEY, timestamp + 60)
    renote = add_signature(note, later)
    assert renote.count(WITNESS_NAME) == 1
    assert cosignature_timestamp(open_note(renote, [WITNESS_VERIFIER])[1][0]) == timestamp + 60


def test_cosignature_tampering() -> None:
    body = Checkpoint(LOG_NAME, 7, hashlib.sha256(b"root").digest()).body()
    line = cosignature_line(body, WITNESS_NAME, WITNESS_KEY, 1_700_000_000)
    raw = _raw(line)

    changed_time = raw[:4] + (1_700_000_001).to_bytes(8, "big") + raw[12:]
    flipped_sig = raw[:-1] + bytes([raw[-1] ^ 0x80])
    huge_time = raw[:4] + (1 << 63).to_bytes(8, "big") + raw[12:]
    for bad in (changed_time, flipped_sig, huge_time, raw[:-1], raw + b"\x00"):
        bad_line = _replace_sig(line, bad)
        assert verify_cosignature_line(body, bad_line, WITNESS_VERIFIER) is None
        with pytest.raises(InvalidSignatureError):
            open_note(body + "\n" + bad_line, [WITNESS_VERIFIER])
    other_body = body.replace("\n7\n", "\n8\n")
    assert verify_cosignature_line(other_body, line, WITNESS_VERIFIER) is None
    assert verify_cosignature_line(body, "garbage", WITNESS_VERIFIER) is None
    other_witness = Verifier(WITNESS_NAME, _pub(OTHER_KEY), SIG_COSIGNATURE_V1)
    assert verify_cosignature_line(body, line, other_witness) is None
    # The same key as a plain Ed25519 (0x01) verifier does not match a cosignature.
    plain = Verifier(WITNESS_NAME, _pub(WITNESS_KEY), SIG_ED25519)
    with pytest.raises(ValueError, match="0x04"):
        verify_cosignature_line(body, line, plain)
    with pytest.raises(UnverifiedNoteError):
        open_note(body + "\n" + line, [plain])
    # A plain note signature is not a cosignature, even by the same key and name.
    plain_line = signature_line(body, WITNESS_NAME, WITNESS_KEY)
    assert verify_cosignature_line(body, plain_line, WITNESS_VERIFIER) is None


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_body_format() -> None:
    root = hashlib.sha256(b"root").digest()
    cp = Checkpoint("example.com/log", 20852163, root, ("ext one", "ext-two"))
    body = cp.body()
    assert body == ("example.com/log\n20852163\n" + base64.b64encode(root).decode() + "\next one\next-two\n")
    assert parse_checkpoint_body(body) == cp
    assert Checkpoint("o", 0, EMPTY_ROOT).body() == ("o\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n")


def test_spec_checkpoint_body_parses() -> None:
    cp = parse_checkpoint_body(SPEC_CHECKPOINT_BODY)
    assert cp.origin == "example.com/behind-the-sofa"
    assert cp.size == 20852163
    assert cp.root_hash == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert cp.extensions == ()
    assert cp.body() == SPEC_CHECKPOINT_BODY


ROOT_B64 = "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="


@pytest.mark.parametrize(
    "body",
    [
        f"o\n07\n{ROOT_B64}\n",  # leading zero
        f"o\n00\n{ROOT_B64}\n",
        f"o\n+7\n{ROOT_B64}\n",  # sign
        f"o\n-1\n{ROOT_B64}\n",
        f"o\n 7\n{ROOT_B64}\n",  # whitespace
        f"o\n1_000\n{ROOT_B64}\n",  # Python-only digit grouping
        f"o\n\u0663\n{ROOT_B64}\n",  # a non-ASCII digit
        f"o\n{1 << 64}\n{ROOT_B64}\n",  # beyond uint64
        f"o\n\n{ROOT_B64}\n",  # empty size
        f"\n7\n{ROOT_B64}\n",  # empty origin
        "o\n7\n",  # too few lines
        "o\n7\nAAAA\n",  # root not 32 bytes
        f"o\n7\n{ROOT_B64[:-2]}J=\n",  # non-canonical base64
        f"o\n7\n{ROOT_B64.rstrip('=')}\n",  # missing padding
        f"o\n7\n{ROOT_B64}",  # no final newline
        f"o\n7\n{ROOT_B64}\n\n",  # trailing blank line
        f"o\n7\n{ROOT_B64}\n\next\n",  # empty extension line
        f"o\r\n7\n{ROOT_B64}\n",  # control character in origin
        f"o\n7\n{ROOT_B64}\next\x00\n",  # control character in extension
        "",
    ],
)
def test_malformed_checkpoint_bodies(body: str) -> None:
    with pytest.raises(CheckpointError):
        parse_checkpoint_body(body)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"origin": ""},
        {"origin": "a\nb"},
        {"size": -1},
        {"size": 1 << 64},
        {"size": True},
        {"root_hash": b"\x00" * 31},
        {"extensions": ("",)},
        {"extensions": ("a\nb",)},
        {"extensions": ["list"]},
    ],
)
def test_checkpoint_validation(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"origin": "o", "size": 1, "root_hash": EMPTY_ROOT}
    args.update(kwargs)
    with pytest.raises(CheckpointError):
        Checkpoint(**args)  # type: ignore[arg-type]


def test_sign_and_open_checkpoint() -> None:
    cp = Checkpoint(LOG_NAME, 42, hashlib.sha256(b"r").digest(), ("note",))
    note = sign_checkpoint(cp, LOG_NAME, LOG_KEY)
    assert note.startswith(cp.body() + "\n" + EM_DASH + " " + LOG_NAME + " ")
    assert open_checkpoint(note, LOG_VERIFIER) == cp

    with pytest.raises(CheckpointError, match="signature"):
        open_checkpoint(note, Verifier(LOG_NAME, _pub(OTHER_KEY)))  # wrong key
    with pytest.raises(CheckpointError, match="signature"):
        open_checkpoint(note.replace("\n42\n", "\n43\n"), LOG_VERIFIER)
    with pytest.raises(CheckpointError, match="signature"):
        open_checkpoint(note.replace(EM_DASH, "-"), LOG_VERIFIER)

    # The key name SHOULD match the origin: checked by default, overridable.
    other = Checkpoint("other.example/log", 1, EMPTY_ROOT)
    other_note = sign_checkpoint(other, LOG_NAME, LOG_KEY)
    with pytest.raises(CheckpointError, match="origin"):
        open_checkpoint(other_note, LOG_VERIFIER)
    assert open_checkpoint(other_note, LOG_VERIFIER, origin="other.example/log") == other
    with pytest.raises(CheckpointError, match="origin"):
        open_checkpoint(note, LOG_VERIFIER, origin="someone.else/log")

    # A note that verifies but is not a checkpoint.
    with pytest.raises(CheckpointError, match="at least 3 lines"):
        open_checkpoint(sign_note("just text\n", LOG_NAME, LOG_KEY), LOG_VERIFIER)
    with pytest.raises(CheckpointError):
        sign_checkpoint(cp, "bad name", LOG_KEY)


@settings(max_examples=80, deadline=None)
@given(
    origin=st.text(alphabet=st.characters(min_codepoint=0x20, exclude_categories=["Cs"]),
                   min_size=1, max_size=30),
    size=st.integers(0, (1 << 64) - 1),
    root=st.binary(min_size=32, max_size=32),
    extensions=st.lists(
        st.text(alphabet=st.characters(min_codepoint=0x20, exclude_categories=["Cs"]),
                min_size=1, max_size=10),
        max_size=3,
    ),
)  # fmt: skip
def test_checkpoint_round_trip_property(origin: str, size: int, root: bytes, extensions: list[str]) -> None:
    cp = Checkpoint(origin, size, root, tuple(extensions))
    assert parse_checkpoint_body(cp.body()) == cp
    note = sign_checkpoint(cp, LOG_NAME, LOG_KEY)
    assert open_checkpoint(note, LOG_VERIFIER, origin=origin) == cp
