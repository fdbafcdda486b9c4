#!/usr/bin/env python3
"""Independent second implementation of the KLP v1 wire protocol.

Written only from docs/protocol.md, docs/governance.md and docs/vectors/*.json (no Rust source
was read). It re-derives every test vector from first principles, checks the decoding/verification
order of protocol.md §3.5, and verifies the certificate and receipt files of
docs/vectors/certificate-v1.json as protocol.md §10 describes (signatures, the registry bytes
hashed as they are, weights, commits of one round from more than 2/3 of the eligible weight).

Dependencies: Python 3.11 standard library + the `cryptography` package (Ed25519 signing and
verification, X25519 scalar multiplication, AES-256-GCM). CBOR, base58btc, base32, HKDF/HPKE,
multihash/PeerId and address parsing are implemented here.

Usage: python3 tests/interop/klp_check.py [path/to/klp-v1.json]
Prints one line per check and a final line "N passed, M failed"; exits 1 on any failure.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
from pathlib import Path

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# ---------------------------------------------------------------------------------------------
# Check bookkeeping
# ---------------------------------------------------------------------------------------------

PASSED = 0
FAILED = 0


def check(name: str, ok: bool, detail: str = "") -> bool:
    global PASSED, FAILED
    if ok:
        PASSED += 1
        print(f"PASS  {name}")
    else:
        FAILED += 1
        print(f"FAIL  {name}" + (f"  -- {detail}" if detail else ""))
    return ok


def check_eq(name: str, got, want) -> bool:
    if isinstance(got, (bytes, bytearray)):
        got = bytes(got).hex()
    if isinstance(want, (bytes, bytearray)):
        want = bytes(want).hex()
    return check(name, got == want, f"got {got!r}, want {want!r}")


# ---------------------------------------------------------------------------------------------
# §1.1 Deterministic CBOR
#
# Value model: int (major 0/1), bytes (2), str (3), list (4), dict with str keys (5) — or bytes
# keys, which only the registry's `members` map uses (§1.1) — False/True (0xf4/0xf5), None
# (0xf6). Nothing else exists in KLP.
# ---------------------------------------------------------------------------------------------


class CborMalformed(Exception):
    """Not well-formed, truncated, or outside the KLP data model (tags, floats, ...)."""


class CborTrailing(Exception):
    """A complete item was followed by more bytes."""


class CborNonCanonical(Exception):
    """Well-formed, but not the deterministic encoding of the decoded value."""


def _head(major: int, n: int) -> bytes:
    if n < 0:
        raise ValueError("negative length/argument")
    if n < 24:
        return bytes([(major << 5) | n])
    if n < 0x100:
        return bytes([(major << 5) | 24, n])
    if n < 0x10000:
        return bytes([(major << 5) | 25]) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes([(major << 5) | 26]) + n.to_bytes(4, "big")
    if n < 0x10000000000000000:
        return bytes([(major << 5) | 27]) + n.to_bytes(8, "big")
    raise ValueError("integer out of CBOR range")


def _key_order(encoded_key: bytes):
    # §1.1 rule 3 as written: "shorter encodings first, then bytewise".
    return (len(encoded_key), encoded_key)


def cbor_encode(v) -> bytes:
    """Deterministic encoder (§1.1). Map keys are sorted, so callers may use any dict order."""
    if v is None:
        return b"\xf6"
    if v is False:
        return b"\xf4"
    if v is True:
        return b"\xf5"
    if isinstance(v, int):
        return _head(0, v) if v >= 0 else _head(1, -1 - v)
    if isinstance(v, (bytes, bytearray)):
        return _head(2, len(v)) + bytes(v)
    if isinstance(v, str):
        b = v.encode("utf-8")
        return _head(3, len(b)) + b
    if isinstance(v, (list, tuple)):
        return _head(4, len(v)) + b"".join(cbor_encode(x) for x in v)
    if isinstance(v, dict):
        items = [(cbor_encode(k), cbor_encode(x)) for k, x in v.items()]
        items.sort(key=lambda kv: _key_order(kv[0]))
        for a, b in zip(items, items[1:]):
            if a[0] == b[0]:
                raise ValueError("duplicate map key")
        return _head(5, len(items)) + b"".join(k + x for k, x in items)
    raise TypeError(f"value not encodable in KLP CBOR: {type(v).__name__}")


class _Reader:
    MAX_DEPTH = 128

    def __init__(self, data: bytes):
        self.d = data
        self.i = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.i + n > len(self.d):
            raise CborMalformed("truncated")
        b = self.d[self.i : self.i + n]
        self.i += n
        return b

    def byte(self) -> int:
        return self.take(1)[0]

    def argument(self, ai: int):
        """Returns the argument, or None for indefinite length (ai = 31).
        Non-shortest forms are accepted here; they are caught by the canonical re-encode."""
        if ai < 24:
            return ai
        if ai == 24:
            return self.byte()
        if ai == 25:
            return int.from_bytes(self.take(2), "big")
        if ai == 26:
            return int.from_bytes(self.take(4), "big")
        if ai == 27:
            return int.from_bytes(self.take(8), "big")
        if ai == 31:
            return None
        raise CborMalformed(f"reserved additional information {ai}")

    def item(self, depth: int = 0):
        if depth > self.MAX_DEPTH:
            raise CborMalformed("nesting too deep")
        ib = self.byte()
        major, ai = ib >> 5, ib & 0x1F
        if major == 7:
            if ai == 20:
                return False
            if ai == 21:
                return True
            if ai == 22:
                return None
            # undefined, other simple values, floats, "break" outside an indefinite item
            raise CborMalformed(f"simple/float value 0x{ib:02x} not allowed in KLP")
        if major == 6:
            raise CborMalformed("tags are not allowed in KLP")
        n = self.argument(ai)
        if major == 0:
            if n is None:
                raise CborMalformed("indefinite integer")
            return n
        if major == 1:
            if n is None:
                raise CborMalformed("indefinite integer")
            return -1 - n
        if major in (2, 3):
            if n is None:  # indefinite-length string: chunks of the same major type
                chunks = []
                while True:
                    if self.i >= len(self.d):
                        raise CborMalformed("truncated")
                    if self.d[self.i] == 0xFF:
                        self.i += 1
                        break
                    cb = self.byte()
                    if cb >> 5 != major or (cb & 0x1F) == 31:
                        raise CborMalformed("bad chunk in indefinite string")
                    cn = self.argument(cb & 0x1F)
                    chunks.append(self.take(cn))
                raw = b"".join(chunks)
            else:
                raw = self.take(n)
            if major == 2:
                return bytes(raw)
            try:
                return raw.decode("utf-8", errors="strict")
            except UnicodeDecodeError as e:
                raise CborMalformed("invalid UTF-8") from e
        if major == 4:
            out = []
            if n is None:
                while True:
                    if self.i >= len(self.d):
                        raise CborMalformed("truncated")
                    if self.d[self.i] == 0xFF:
                        self.i += 1
                        return out
                    out.append(self.item(depth + 1))
            if n > len(self.d) - self.i:  # every item takes at least one byte
                raise CborMalformed("truncated")
            for _ in range(n):
                out.append(self.item(depth + 1))
            return out
        if major == 5:
            out = {}
            dup = False
            count = 0
            while True:
                if n is None:
                    if self.i >= len(self.d):
                        raise CborMalformed("truncated")
                    if self.d[self.i] == 0xFF:
                        self.i += 1
                        break
                elif count == n:
                    break
                k = self.item(depth + 1)
                if not isinstance(k, (str, bytes)):
                    raise CborMalformed("KLP map keys are text or byte strings")
                x = self.item(depth + 1)
                if k in out:
                    dup = True
                out[k] = x
                count += 1
            if dup:
                # §1.1 rule 4 lists "no duplicate keys" among the deterministic-encoding rules.
                raise CborNonCanonical("duplicate map key")
            return out
        raise CborMalformed("unreachable")


def cbor_decode_prefix(data: bytes):
    """Decode one item from the start of `data` (lenient about head sizes / indefinite lengths).
    Returns (value, end_offset). Raises CborMalformed / CborNonCanonical(duplicate keys)."""
    r = _Reader(data)
    v = r.item()
    return v, r.i


def cbor_decode_strict(data: bytes):
    """Exactly one item, nothing after it, deterministic encoding (§1.1)."""
    v, end = cbor_decode_prefix(data)
    if end != len(data):
        raise CborTrailing(f"{len(data) - end} trailing byte(s)")
    if cbor_encode(v) != data:
        raise CborNonCanonical("re-encoding differs")
    return v


# ---------------------------------------------------------------------------------------------
# CBOR diagnostic notation (the subset used in the vector file), to re-encode the vectors'
# *_diagnostic fields independently of their hex.
# ---------------------------------------------------------------------------------------------


def parse_diag(s: str):
    pos = 0

    def ws():
        nonlocal pos
        while pos < len(s) and s[pos] in " \t\r\n":
            pos += 1

    def value():
        nonlocal pos
        ws()
        c = s[pos]
        if c == "{":
            pos += 1
            out = {}
            ws()
            if s[pos] == "}":
                pos += 1
                return out
            while True:
                k = value()
                ws()
                assert s[pos] == ":", f"expected ':' at {pos}"
                pos += 1
                if k in out:
                    raise ValueError("duplicate key in diagnostic")
                out[k] = value()
                ws()
                if s[pos] == ",":
                    pos += 1
                    continue
                assert s[pos] == "}", f"expected '}}' at {pos}"
                pos += 1
                return out
        if c == "[":
            pos += 1
            out = []
            ws()
            if s[pos] == "]":
                pos += 1
                return out
            while True:
                out.append(value())
                ws()
                if s[pos] == ",":
                    pos += 1
                    continue
                assert s[pos] == "]", f"expected ']' at {pos}"
                pos += 1
                return out
        if c == '"':
            end = pos + 1
            while s[end] != '"':
                end += 2 if s[end] == "\\" else 1
            tok = s[pos : end + 1]
            pos = end + 1
            return json.loads(tok)
        if s.startswith("h'", pos):
            end = s.index("'", pos + 2)
            b = bytes.fromhex(s[pos + 2 : end])
            pos = end + 1
            return b
        for word, val in (("null", None), ("true", True), ("false", False)):
            if s.startswith(word, pos):
                pos += len(word)
                return val
        end = pos + 1 if s[pos] == "-" else pos
        while end < len(s) and s[end].isdigit():
            end += 1
        tok = s[pos:end]
        pos = end
        return int(tok)

    v = value()
    ws()
    if pos != len(s):
        raise ValueError(f"trailing text in diagnostic at {pos}")
    return v


# ---------------------------------------------------------------------------------------------
# Encodings: base58btc, base32 (RFC 4648, lower case, no padding), unsigned varint
# ---------------------------------------------------------------------------------------------

B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def b58encode(b: bytes) -> str:
    zeros = len(b) - len(b.lstrip(b"\x00"))
    n = int.from_bytes(b, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = B58_ALPHABET[r] + out
    return "1" * zeros + out


def b58decode(s: str) -> bytes:
    n = 0
    for ch in s:
        i = B58_ALPHABET.find(ch)
        if i < 0:
            raise ValueError("bad base58 character")
        n = n * 58 + i
    zeros = len(s) - len(s.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\x00" * zeros + body


B32_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"


def b32encode_lower_nopad(b: bytes) -> str:
    bits = int.from_bytes(b, "big")
    nbits = len(b) * 8
    nchars = (nbits + 4) // 5
    bits <<= nchars * 5 - nbits
    return "".join(B32_ALPHABET[(bits >> (5 * (nchars - 1 - i))) & 31] for i in range(nchars))


def b32decode_lower_nopad(s: str) -> bytes:
    """Strict: lower case only, no padding, trailing bits zero, length valid (§2.2)."""
    nbits = len(s) * 5
    nbytes = nbits // 8
    if (nbytes * 8 + 4) // 5 != len(s):
        raise ValueError("impossible base32 length")
    v = 0
    for ch in s:
        i = B32_ALPHABET.find(ch)
        if i < 0:
            raise ValueError("bad base32 character (upper case is refused)")
        v = (v << 5) | i
    extra = nbits - nbytes * 8
    if v & ((1 << extra) - 1):
        raise ValueError("non-zero trailing bits")
    return (v >> extra).to_bytes(nbytes, "big")


def uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def read_uvarint(b: bytes, i: int):
    n = shift = 0
    start = i
    while True:
        if i >= len(b) or i - start >= 9:
            raise ValueError("bad varint")
        c = b[i]
        i += 1
        n |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            if uvarint(n) != b[start:i]:
                raise ValueError("non-minimal varint")
            return n, i


# ---------------------------------------------------------------------------------------------
# Ed25519 point arithmetic (only for key validity / small-order checks; signing and the
# verification equation are done by `cryptography`)
# ---------------------------------------------------------------------------------------------

ED_P = 2**255 - 19
ED_L = 2**252 + 27742317777372353535851937790883648493
ED_D = (-121665 * pow(121666, ED_P - 2, ED_P)) % ED_P
ED_SQRT_M1 = pow(2, (ED_P - 1) // 4, ED_P)


def ed_decode_point(b: bytes):
    """RFC 8032 §5.1.3 decoding. Returns (x, y) or None."""
    if len(b) != 32:
        return None
    v = int.from_bytes(b, "little")
    sign = v >> 255
    y = v & ((1 << 255) - 1)
    if y >= ED_P:
        return None
    u = (y * y - 1) % ED_P
    w = (ED_D * y * y + 1) % ED_P
    x2 = u * pow(w, ED_P - 2, ED_P) % ED_P
    if x2 == 0:
        if sign:
            return None
        return (0, y)
    x = pow(x2, (ED_P + 3) // 8, ED_P)
    if (x * x - x2) % ED_P:
        x = x * ED_SQRT_M1 % ED_P
    if (x * x - x2) % ED_P:
        return None
    if (x & 1) != sign:
        x = ED_P - x
    return (x, y)


def ed_add(p1, p2):
    x1, y1 = p1
    x2, y2 = p2
    t = ED_D * x1 * x2 * y1 * y2 % ED_P
    x3 = (x1 * y2 + y1 * x2) * pow(1 + t, ED_P - 2, ED_P) % ED_P
    y3 = (y1 * y2 + x1 * x2) * pow(1 - t, ED_P - 2, ED_P) % ED_P
    return (x3, y3)


def ed_small_order(pt) -> bool:
    q = pt
    for _ in range(3):
        q = ed_add(q, q)
    return q == (0, 1)


def ed_valid_key(b: bytes) -> bool:
    """§2.1: decodes to a curve point and is not of small order."""
    pt = ed_decode_point(b)
    return pt is not None and not ed_small_order(pt)


def ed_verify_strict(pk: bytes, msg: bytes, sig: bytes) -> bool:
    """§2.1 strict verification: S < L, R and A not small order, cofactorless equation."""
    if len(sig) != 64 or len(pk) != 32:
        return False
    if int.from_bytes(sig[32:], "little") >= ED_L:
        return False
    r = ed_decode_point(sig[:32])
    a = ed_decode_point(pk)
    if r is None or a is None or ed_small_order(r) or ed_small_order(a):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(pk).verify(sig, msg)  # cofactorless in OpenSSL
        return True
    except (InvalidSignature, ValueError):
        return False


def ed_public_key(seed: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def ed_sign(seed: bytes, msg: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(seed).sign(msg)


# ---------------------------------------------------------------------------------------------
# §2.2 Names of a key
# ---------------------------------------------------------------------------------------------


def did_key(pk: bytes) -> str:
    return "did:key:z" + b58encode(b"\xed\x01" + pk)


def klp_id(pk: bytes) -> str:
    return b32encode_lower_nopad(hashlib.sha256(pk).digest()[:16])


def peer_id(pk: bytes) -> str:
    proto = b"\x08\x01\x12\x20" + pk  # PublicKey { Type: Ed25519 (1), Data: pk }
    return b58encode(b"\x00" + uvarint(len(proto)) + proto)  # identity multihash


def is_peer_id(s: str) -> bool:
    """A libp2p PeerId in its base58btc multihash form. The document does not say which forms
    are allowed in peer://; accepted here: identity multihash of an Ed25519 protobuf key
    (valid point), or a sha2-256 multihash."""
    try:
        raw = b58decode(s)
        if b58encode(raw) != s:
            return False
        code, i = read_uvarint(raw, 0)
        ln, i = read_uvarint(raw, i)
        digest = raw[i:]
        if len(digest) != ln:
            return False
        if code == 0x12:
            return ln == 32
        if code == 0x00:
            return (
                ln == 36
                and digest[:4] == b"\x08\x01\x12\x20"
                and ed_valid_key(digest[4:])
            )
        return False
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------
# RFC 9180 HPKE, base mode, suite DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 / AES-256-GCM
# ---------------------------------------------------------------------------------------------

KEM_ID, KDF_ID, AEAD_ID = 0x0020, 0x0001, 0x0002
SUITE_KEM = b"KEM" + KEM_ID.to_bytes(2, "big")
SUITE_HPKE = b"HPKE" + KEM_ID.to_bytes(2, "big") + KDF_ID.to_bytes(2, "big") + AEAD_ID.to_bytes(2, "big")
NSECRET, NSK, NK, NN, NH = 32, 32, 32, 12, 32


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt if salt else b"\x00" * NH, ikm, hashlib.sha256).digest()


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, t, i = b"", b"", 1
    while len(out) < length:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        out += t
        i += 1
    return out[:length]


def labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return hkdf_extract(salt, b"HPKE-v1" + suite_id + label + ikm)


def labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    return hkdf_expand(prk, length.to_bytes(2, "big") + b"HPKE-v1" + suite_id + label + info, length)


def x25519_pub(sk: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(sk).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def x25519_dh(sk: bytes, pk: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(sk).exchange(X25519PublicKey.from_public_bytes(pk))


def derive_key_pair(ikm: bytes):
    """RFC 9180 §7.1.3 for X25519."""
    dkp_prk = labeled_extract(SUITE_KEM, b"", b"dkp_prk", ikm)
    sk = labeled_expand(SUITE_KEM, dkp_prk, b"sk", b"", NSK)
    return sk, x25519_pub(sk)


def extract_and_expand(dh: bytes, kem_context: bytes) -> bytes:
    eae_prk = labeled_extract(SUITE_KEM, b"", b"eae_prk", dh)
    return labeled_expand(SUITE_KEM, eae_prk, b"shared_secret", kem_context, NSECRET)


def encap_deterministic(pk_r: bytes, ikm_e: bytes):
    sk_e, pk_e = derive_key_pair(ikm_e)
    dh = x25519_dh(sk_e, pk_r)
    enc = pk_e
    return extract_and_expand(dh, enc + pk_r), enc


def decap(enc: bytes, sk_r: bytes) -> bytes:
    dh = x25519_dh(sk_r, enc)
    return extract_and_expand(dh, enc + x25519_pub(sk_r))


def key_schedule_base(shared_secret: bytes, info: bytes):
    mode = b"\x00"
    psk_id_hash = labeled_extract(SUITE_HPKE, b"", b"psk_id_hash", b"")
    info_hash = labeled_extract(SUITE_HPKE, b"", b"info_hash", info)
    ctx = mode + psk_id_hash + info_hash
    secret = labeled_extract(SUITE_HPKE, shared_secret, b"secret", b"")
    key = labeled_expand(SUITE_HPKE, secret, b"key", ctx, NK)
    base_nonce = labeled_expand(SUITE_HPKE, secret, b"base_nonce", ctx, NN)
    return key, base_nonce


def seal_base(pk_r: bytes, info: bytes, aad: bytes, pt: bytes, ikm_e: bytes):
    ss, enc = encap_deterministic(pk_r, ikm_e)
    key, nonce = key_schedule_base(ss, info)  # first message: seq 0, nonce = base_nonce
    return enc, AESGCM(key).encrypt(nonce, pt, aad)


def open_base(enc: bytes, sk_r: bytes, info: bytes, aad: bytes, ct: bytes) -> bytes:
    ss = decap(enc, sk_r)
    key, nonce = key_schedule_base(ss, info)
    return AESGCM(key).decrypt(nonce, ct, aad)


def x25519_from_seed(seed: bytes):
    """§5.1"""
    ikm = hashlib.sha256(b"kos-klp-v1/x25519\x00" + seed).digest()
    return derive_key_pair(ikm)


SEAL_INFO = b"kos-klp-v1/seal"


# ---------------------------------------------------------------------------------------------
# §2.3 Addresses
# ---------------------------------------------------------------------------------------------


class AddressError(Exception):
    pass


PATH_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789" "-._~!$&'()*+,;=:@/%"
)
LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def is_klp_id(s: str) -> bool:
    if len(s) != 26:
        return False
    try:
        return len(b32decode_lower_nopad(s)) == 16
    except ValueError:
        return False


def parse_host(h: str) -> str:
    """Returns the canonical host text."""
    if len(h) == 26 and is_klp_id(h):
        return h
    lower = h.lower() if h.isascii() else None
    if not lower or len(lower.encode()) > 253:
        raise AddressError("bad name")
    for label in lower.split("."):
        if not (1 <= len(label) <= 63) or not set(label) <= LABEL_CHARS:
            raise AddressError("bad label")
        if label[0] == "-" or label[-1] == "-":
            raise AddressError("label starts or ends with '-'")
    return lower


def parse_address(s: str):
    if len(s.encode("utf-8")) > 1024:
        raise AddressError("address longer than 1024 bytes")
    for scheme in ("klp", "peer", "agent"):
        prefix = scheme + "://"
        if s.startswith(prefix):
            rest = s[len(prefix):]
            break
    else:
        raise AddressError("unknown scheme")
    if scheme == "klp":
        host, sep, path = rest.partition("/")
        if sep and not set(path) <= PATH_CHARS:
            raise AddressError("bad path character")
        return (scheme, parse_host(host), path if sep else None)
    if "/" in rest:
        raise AddressError(f"{scheme}:// takes no path")
    if scheme == "peer":
        if not is_peer_id(rest):
            raise AddressError("bad PeerId")
        return (scheme, rest, None)
    return (scheme, parse_host(rest), None)


def format_address(a) -> str:
    scheme, host, path = a
    return f"{scheme}://{host}" + (f"/{path}" if path is not None else "")


# ---------------------------------------------------------------------------------------------
# §4 Body shapes and validation rules
# ---------------------------------------------------------------------------------------------


class BadBody(Exception):
    pass


class InvalidBody(Exception):
    pass


class S:
    """Schema node. shape(v, rules) raises BadBody; rule failures are appended to `rules`."""

    def shape(self, v, rules: list, path: str):
        raise NotImplementedError


class UInt(S):
    def __init__(self, bits=64, lo=None, hi=None):
        self.bits, self.lo, self.hi = bits, lo, hi

    def shape(self, v, rules, path):
        if type(v) is not int or v < 0 or v >= 1 << self.bits:
            raise BadBody(f"{path}: expected u{self.bits}")
        if self.lo is not None and v < self.lo:
            rules.append(f"{path}: {v} < {self.lo}")
        if self.hi is not None and v > self.hi:
            rules.append(f"{path}: {v} > {self.hi}")


class I32(S):
    def shape(self, v, rules, path):
        if type(v) is not int or not -(2**31) <= v < 2**31:
            raise BadBody(f"{path}: expected i32")


class Bool(S):
    def shape(self, v, rules, path):
        if type(v) is not bool:
            raise BadBody(f"{path}: expected bool")


class Bstr(S):
    def __init__(self, n=None, is_key=False):
        self.n, self.is_key = n, is_key

    def shape(self, v, rules, path):
        if type(v) is not bytes:
            raise BadBody(f"{path}: expected bstr")
        if self.n is not None and len(v) != self.n:
            raise BadBody(f"{path}: expected bstr({self.n})")
        if self.is_key and not ed_valid_key(v):
            rules.append(f"{path}: invalid or small-order Ed25519 key")


KEY = Bstr(32, is_key=True)
ID = Bstr(32)
DIGEST = Bstr(32)


class Tstr(S):
    def __init__(self, lo=0, hi=None):
        self.lo, self.hi = lo, hi

    def shape(self, v, rules, path):
        if type(v) is not str:
            raise BadBody(f"{path}: expected tstr")
        n = len(v)  # Unicode scalar values
        if n < self.lo or (self.hi is not None and n > self.hi):
            rules.append(f"{path}: length {n} not in {self.lo}..{self.hi}")


class Enum(S):
    """Externally tagged enumeration: unit variants are text, data variants 1-entry maps."""

    def __init__(self, units=(), data=None):
        self.units = frozenset(units)
        self.data = data or {}

    def shape(self, v, rules, path):
        if type(v) is str:
            if v not in self.units:
                raise BadBody(f"{path}: unknown variant {v!r}")
            return
        if type(v) is dict and len(v) == 1:
            (k, x), = v.items()
            if k in self.data:
                self.data[k].shape(x, rules, f"{path}.{k}")
                return
        raise BadBody(f"{path}: bad enumeration value")


class Array(S):
    def __init__(self, item, lo=0, hi=None, distinct=None, ascending=False):
        self.item, self.lo, self.hi = item, lo, hi
        self.distinct = distinct  # None, or a function giving the identity of an element
        self.ascending = ascending

    def shape(self, v, rules, path):
        if type(v) is not list:
            raise BadBody(f"{path}: expected array")
        for i, x in enumerate(v):
            self.item.shape(x, rules, f"{path}[{i}]")
        if len(v) < self.lo or (self.hi is not None and len(v) > self.hi):
            rules.append(f"{path}: {len(v)} items not in {self.lo}..{self.hi}")
        if self.distinct is not None:
            ids = [cbor_encode(self.distinct(x)) for x in v]
            if len(set(ids)) != len(ids):
                rules.append(f"{path}: items not distinct")
        if self.ascending and any(a >= b for a, b in zip(v, v[1:])):
            rules.append(f"{path}: not strictly ascending")


class Tuple(S):
    def __init__(self, *items):
        self.items = items

    def shape(self, v, rules, path):
        if type(v) is not list or len(v) != len(self.items):
            raise BadBody(f"{path}: expected {len(self.items)}-array")
        for i, (sch, x) in enumerate(zip(self.items, v)):
            sch.shape(x, rules, f"{path}[{i}]")


class Map(S):
    def __init__(self, fields, rule=None):
        """fields: list of (name, schema, optional), in the order protocol.md lists them."""
        self.fields = fields
        self.rule = rule  # function(dict) -> list of violations

    def shape(self, v, rules, path):
        if type(v) is not dict:
            raise BadBody(f"{path}: expected map")
        names = {f[0] for f in self.fields}
        for k in v:
            if k not in names:
                raise BadBody(f"{path}: unknown key {k!r}")
        for name, sch, optional in self.fields:
            if name not in v:
                if not optional:
                    raise BadBody(f"{path}: missing key {name!r}")
                continue
            sch.shape(v[name], rules, f"{path}.{name}")
        if self.rule:
            rules.extend(f"{path}: {m}" for m in self.rule(v))


def M(*fields, rule=None):
    """Helper: ('name', schema) or ('name', schema, 'opt')."""
    return Map([(f[0], f[1], len(f) > 2 and f[2] == "opt") for f in fields], rule)


TRUST_LEVEL = Enum(["core", "trusted", "standard", "sandbox", "quarantine"])
ROLE_NAMES = [
    "citizen", "delegate", "validator", "council_member", "emergency_responder", "proposer",
    "discussant", "reviewer", "mediator", "voter", "executor", "summarizer", "arbiter",
]
ROLE = Enum(ROLE_NAMES)
BODY_KIND = Enum(["protocol_council", "technical_committee", "agent_council", "security_board"])
PROPOSAL_TYPE = Enum([
    "protocol_upgrade", "service_policy", "agent_behavior", "security_policy",
    "resource_allocation", "configuration", "trust_adjustment", "membership",
    "emergency_action", "constitutional_change",
])
SCOPE = Enum(["global", "regional", "local", "emergency"])
COMMENT_KIND = Enum(["comment", "suggestion", "objection", "support", "summary"])
WEIGHTING = Enum(["one_person_one_vote", "trust", "stake", "role", "hybrid"])
VOTING_FIELD = Enum(["rule", "veto", "quorum", "secret", "sponsors", "reasoning", "weighting", "early_close"])
OUTCOME = Enum(["approved", "rejected", "failed_quorum", "vetoed"])


class RatioS(S):
    def shape(self, v, rules, path):
        Tuple(UInt(32), UInt(32)).shape(v, rules, path)
        num, den = v
        if not (0 < den and num <= den):
            rules.append(f"{path}: ratio needs 0 < den and num <= den")


RATIO = RatioS()
RULE = Enum(
    ["simple_majority", "consensus", "plurality", "instant_runoff"],
    {"supermajority": RATIO},
)
BINARY_RULES = ("simple_majority", "consensus")  # plus {"supermajority": ...}


def rule_is_binary(r) -> bool:
    return r in BINARY_RULES or (isinstance(r, dict) and "supermajority" in r)


CHOICE = Enum(
    ["yes", "no", "abstain", "veto"],
    {
        "approve": Array(UInt(), 0, 64, ascending=True),
        "rank": Array(UInt(), 1, 64, distinct=lambda x: x),
    },
)
DELEGATION_SCOPE = Enum(["all"], {"kind": PROPOSAL_TYPE, "scope": SCOPE})

MEMBER = M(("key", KEY), ("roles", Array(ROLE, distinct=lambda x: x)), ("stake", UInt()), ("trust", TRUST_LEVEL))
VOTING_CONFIG = M(
    ("rule", RULE), ("veto", RATIO), ("quorum", RATIO), ("secret", Bool()), ("sponsors", UInt(16)),
    ("reasoning", Bool()), ("weighting", WEIGHTING), ("early_close", Bool()),
    rule=lambda v: ["early_close must be false when secret"] if v["secret"] and v["early_close"] else [],
)
TIMING = M(
    ("grace_ms", UInt()), ("reveal_ms", UInt()), ("clock_skew_ms", UInt()), ("max_voting_ms", UInt()),
    ("min_voting_ms", UInt()), ("default_voting_ms", UInt()), ("min_discussion_ms", UInt()),
    rule=lambda v: [] if 0 < v["min_voting_ms"] <= v["default_voting_ms"] <= v["max_voting_ms"]
    else ["need 0 < min_voting_ms <= default_voting_ms <= max_voting_ms"],
)
ACTION = Enum(
    ["none"],
    {
        "configuration": M(("key", Tstr(1, 200)), ("new", Tstr(0, 200)), ("old", Tstr(0, 200), "opt")),
        "trust_adjustment": M(("level", TRUST_LEVEL), ("member", KEY)),
        "add_member": MEMBER,
        "remove_member": KEY,
        "policy_update": Tstr(1, 16384),
        "protocol_upgrade": UInt(16),
        "quarantine": KEY,
        "rollback": ID,
    },
)
OPTIONS = Array(Tstr(1, 200), 0, 64, distinct=lambda x: x)


def _timeline_rules(v):
    out = []
    if not v["voting_end_ms"] > v["discussion_end_ms"]:
        out.append("voting_end_ms must be > discussion_end_ms")
    if "reveal_end_ms" in v and not v["reveal_end_ms"] > v["voting_end_ms"]:
        out.append("reveal_end_ms must be > voting_end_ms")
    return out


def _proposal_rules(v):
    if "voting" in v and rule_is_binary(v["voting"]["rule"]) != (len(v["options"]) == 0):
        return ["voting rule is binary iff options is empty"]
    return []


def _directory_rules(v):
    name = v.get("name")
    if name is None:
        return []
    try:
        ok = parse_host(name) == name and not is_klp_id(name)
    except AddressError:
        ok = False
    return [] if ok else ["name is not a lower-case directory name"]


def _vector_sync_rules(v):
    out = []
    if v["dims"] >= 1 and len(v["data"]) % (4 * v["dims"]):
        out.append("data length not a multiple of 4*dims")
    if not v["chunk"] < v["chunks"]:
        out.append("chunk must be < chunks")
    return out


BODIES = {
    1: ("CHARTER", M(
        ("name", Tstr(1, 200)), ("nonce", UInt()),
        ("bodies", Array(M(("kind", BODY_KIND), ("members", Array(KEY, distinct=lambda x: x))),
                         distinct=lambda b: b["kind"])),
        ("hybrid", M(("role", UInt(32)), ("stake", UInt(32)), ("trust", UInt(32)))),
        ("timing", TIMING),
        ("members", Array(MEMBER, 1, 512, distinct=lambda m: m["key"])),
        ("defaults", Array(M(("kind", PROPOSAL_TYPE), ("config", VOTING_CONFIG),
                             ("overrides", Array(VOTING_FIELD, 0, 8, distinct=lambda x: x), "opt")),
                           distinct=lambda d: d["kind"])),
        ("role_weights", Array(M(("role", ROLE), ("weight", UInt())), distinct=lambda r: r["role"])),
        ("max_delegation_depth", UInt(64, 0, 255)),
        ("min_protocol_version", UInt(16)),
    )),
    2: ("PROPOSAL", M(
        ("kind", PROPOSAL_TYPE), ("scope", SCOPE), ("title", Tstr(1, 200)), ("action", ACTION),
        ("voting", VOTING_CONFIG, "opt"), ("options", OPTIONS),
        ("registry", M(("hash", DIGEST), ("epoch", UInt()))),
        ("timeline", M(("reveal_end_ms", UInt(), "opt"), ("voting_end_ms", UInt()),
                       ("discussion_end_ms", UInt()), ("execution_delay_ms", UInt()), rule=_timeline_rules)),
        ("federation", ID), ("description", Tstr(1, 10000)),
        rule=_proposal_rules,
    )),
    3: ("REVISION", M(
        ("title", Tstr(1, 200)), ("action", ACTION), ("options", OPTIONS), ("proposal", ID),
        ("revision", UInt(32, lo=1)), ("federation", ID), ("description", Tstr(1, 10000)),
    )),
    4: ("SPONSOR", M(("proposal", ID), ("federation", ID))),
    5: ("WITHDRAW", M(("reason", Tstr(1, 2000), "opt"), ("proposal", ID), ("federation", ID))),
    6: ("COMMENT", M(
        ("kind", COMMENT_KIND), ("text", Tstr(1, 10000)), ("parent", ID, "opt"),
        ("proposal", ID), ("revision", UInt(32)), ("federation", ID),
    )),
    7: ("VOTE", M(
        ("choice", CHOICE), ("reason", Tstr(1, 2000), "opt"), ("proposal", ID),
        ("revision", UInt(32)), ("federation", ID),
    )),
    8: ("VOTE_COMMIT", M(("proposal", ID), ("revision", UInt(32)), ("commitment", DIGEST), ("federation", ID))),
    9: ("VOTE_REVEAL", M(
        ("salt", Bstr(32)), ("choice", CHOICE), ("reason", Tstr(1, 2000), "opt"),
        ("proposal", ID), ("revision", UInt(32)), ("federation", ID),
    )),
    10: ("DELEGATION", M(("scope", DELEGATION_SCOPE), ("delegate", KEY, "opt"), ("federation", ID))),
    11: ("TALLY_ATTESTATION", M(
        ("phase", Enum(["prepare", "commit"]), "opt"), ("round", UInt(32), "opt"),
        ("totals", Array(UInt(), 0, 64)), ("winner", UInt(16), "opt"), ("counted", UInt(32)),
        ("outcome", OUTCOME), ("eligible", UInt()), ("proposal", ID), ("revision", UInt(32)),
        ("federation", ID), ("votes_root", DIGEST), ("participation", UInt()),
        rule=lambda v: [] if v["participation"] <= v["eligible"] else ["participation > eligible"],
    )),
    12: ("KEY_ROTATION", M(("proof", Bstr(64)), ("new_key", KEY))),
    13: ("REVOCATION", M(("key", KEY), ("reason", Tstr(0, 2000)))),
    257: ("TASK_REQUEST", M(
        ("inputs", Array(Tstr(0, 10000), 0, 256)), ("task_id", Tstr(1, 200)),
        ("min_trust", TRUST_LEVEL), ("deadline_ms", UInt(), "opt"),
    )),
    258: ("TASK_RESULT", M(
        ("ok", Bool()), ("error", Tstr(1, 2000), "opt"), ("outputs", Array(Tstr(0, 10000), 0, 256)),
        ("request", ID, "opt"), ("task_id", Tstr(1, 200)),
    )),
    259: ("AGENT_MIGRATION", M(("name", Tstr(1, 200)), ("agent", KEY), ("snapshot", Bstr()), ("audit_root", DIGEST))),
    260: ("REPUTATION_DELTA", M(("delta", I32()), ("reason", Tstr(0, 2000)), ("subject", KEY))),
    261: ("BROADCAST_ANNOUNCE", M(("text", Tstr(1, 10000)), ("topic", Tstr(1, 200)))),
    262: ("VECTOR_SYNC", M(
        ("data", Bstr()), ("dims", UInt(16, lo=1)), ("chunk", UInt(32)), ("chunks", UInt(32)),
        ("transfer", DIGEST, "opt"), ("collection", Tstr(1, 200)), rule=_vector_sync_rules,
    )),
    513: ("SEALED", M(("ct", Bstr()), ("enc", Bstr(32)))),
    514: ("DIRECTORY_RECORD", M(
        ("name", Tstr(1, 253), "opt"), ("types", Array(UInt(16), 0, 64, distinct=lambda x: x)),
        ("x25519", Bstr(32)), ("addresses", Array(Tstr(1, 256), 0, 16)), ("expires_ms", UInt()),
        rule=_directory_rules,
    )),
}
TYPE_CODES = {name: code for code, (name, _) in BODIES.items()}


def decode_body(type_code: int, body: bytes, author: bytes | None = None):
    """Steps 14-15 of §3.5. Returns the decoded body value."""
    try:
        v = cbor_decode_strict(body)
    except (CborMalformed, CborTrailing, CborNonCanonical) as e:
        raise BadBody(f"body is not deterministic CBOR: {e}") from e
    rules: list = []
    BODIES[type_code][1].shape(v, rules, BODIES[type_code][0])
    if type_code == 11 and (v.get("phase") == "commit" or v.get("round") == 0):
        # §4.12: a commit omits `phase`, round 0 omits `round`; written out, the body is not the
        # deterministic encoding of its value.
        raise BadBody("TALLY_ATTESTATION with an explicit default phase or round")
    if type_code == 12 and author is not None:
        # KEY_ROTATION proof (§4.13); the document does not say at which step this is checked.
        msg = b"kos-klp-v1/key-rotation\x00" + author + v["new_key"]
        if not ed_verify_strict(v["new_key"], msg, v["proof"]):
            rules.append("KEY_ROTATION proof does not verify")
    if rules:
        raise InvalidBody("; ".join(rules))
    return v


# ---------------------------------------------------------------------------------------------
# §3 Envelope: building and the §3.5 receiver
# ---------------------------------------------------------------------------------------------

MAX_ENVELOPE = 61440
SIGN_PREFIX = b"kos-klp-v1/envelope\x00"


def header_bytes(type_code, author, seq, created_ms, target, body) -> bytes:
    return cbor_encode([1, type_code, author, seq, created_ms, target, body])


def signing_input(version: int, type_code: int, header: bytes) -> bytes:
    return SIGN_PREFIX + version.to_bytes(2, "big") + type_code.to_bytes(2, "big") + header


def build_envelope(seed, type_code, seq, created_ms, target, body):
    author = ed_public_key(seed)
    header = header_bytes(type_code, author, seq, created_ms, target, body)
    si = signing_input(1, type_code, header)
    sig = ed_sign(seed, si)
    env = cbor_encode([header, sig])
    return header, si, sig, env, hashlib.sha256(env).digest()


class DecodeError(Exception):
    def __init__(self, name: str, detail: str = ""):
        super().__init__(f"{name}: {detail}" if detail else name)
        self.name = name


def decode_envelope(data: bytes):
    """§3.5, in order. Returns a dict of the header fields and the decoded body."""
    # 1
    if len(data) > MAX_ENVELOPE:
        raise DecodeError("TooLarge")
    # 2
    try:
        env, end = cbor_decode_prefix(data)
    except (CborMalformed, CborNonCanonical) as e:
        raise DecodeError("Malformed", str(e))
    if not (type(env) is list and len(env) == 2 and all(type(x) is bytes for x in env)):
        raise DecodeError("Malformed", "not an array of 2 byte strings")
    # 3
    if end != len(data):
        raise DecodeError("TrailingBytes")
    # 4
    if cbor_encode(env) != data:
        raise DecodeError("NonCanonical", "envelope")
    header_b, sig = env
    # 5
    try:
        hdr, hend = cbor_decode_prefix(header_b)
    except (CborMalformed, CborNonCanonical) as e:
        raise DecodeError("Malformed", f"header: {e}")
    types_ok = (
        type(hdr) is list and len(hdr) == 7
        and type(hdr[0]) is int and hdr[0] >= 0
        and type(hdr[1]) is int and hdr[1] >= 0
        and type(hdr[2]) is bytes
        and type(hdr[3]) is int and hdr[3] >= 0
        and type(hdr[4]) is int and hdr[4] >= 0
        and (hdr[5] is None or type(hdr[5]) is str)
        and type(hdr[6]) is bytes
    )
    if not types_ok:
        raise DecodeError("Malformed", "header shape")
    if hend != len(header_b):
        raise DecodeError("TrailingBytes", "header")
    if cbor_encode(hdr) != header_b:
        raise DecodeError("NonCanonical", "header")
    version, type_code, author, seq, created_ms, target, body = hdr
    # 6
    if version != 1:
        raise DecodeError("UnsupportedVersion")
    # 7
    if type_code not in BODIES:
        raise DecodeError("UnknownType")
    # 8
    if len(author) != 32 or len(sig) != 64:
        raise DecodeError("FieldLength")
    # 9
    if not ed_valid_key(author):
        raise DecodeError("InvalidAuthor")
    # 10, 11
    if target is not None:
        try:
            parsed = parse_address(target)
        except AddressError as e:
            raise DecodeError("InvalidTarget", str(e))
        if format_address(parsed) != target:
            raise DecodeError("NonCanonicalTarget")
    # 12
    if type_code == 513 and target is None:
        raise DecodeError("MissingTarget")
    # 13
    if not ed_verify_strict(author, signing_input(version, type_code, header_b), sig):
        raise DecodeError("BadSignature")
    # 14, 15
    try:
        body_v = decode_body(type_code, body, author)
    except BadBody as e:
        raise DecodeError("BadBody", str(e))
    except InvalidBody as e:
        raise DecodeError("InvalidBody", str(e))
    return {
        "version": version, "type": type_code, "author": author, "seq": seq,
        "created_ms": created_ms, "target": target, "body": body, "body_value": body_v,
        "signature": sig, "header": header_b,
    }


def open_sealed(msg: dict, sk_r: bytes):
    """§5.3 on an envelope already accepted by decode_envelope. Returns (T, B, inner value)."""
    aad = cbor_encode([1, 513, msg["author"], msg["seq"], msg["created_ms"], msg["target"]])
    bv = msg["body_value"]
    pt = open_base(bv["enc"], sk_r, SEAL_INFO, aad, bv["ct"])
    v = cbor_decode_strict(pt)
    if not (type(v) is list and len(v) == 2 and type(v[0]) is int and type(v[1]) is bytes):
        raise ValueError("plaintext is not [T, B]")
    t, b = v
    if t not in BODIES or t == 513:
        raise ValueError("inner type unknown or SEALED")
    return t, b, decode_body(t, b, msg["author"]), pt


# ---------------------------------------------------------------------------------------------
# governance.md §2 registry, §4 weights, §6 finality, and protocol.md §10 certificate files
# ---------------------------------------------------------------------------------------------

REGISTRY_PREFIX = b"kos-klp-v1/registry\x00"


class Dict(S):
    """A map whose keys all follow one schema and whose values follow another (the registry's
    members, bodies, role weights and configuration)."""

    def __init__(self, key, value):
        self.key, self.value = key, value

    def shape(self, v, rules, path):
        if type(v) is not dict:
            raise BadBody(f"{path}: expected map")
        for k, x in v.items():
            self.key.shape(k, rules, f"{path} key")
            self.value.shape(x, rules, f"{path}[{k!r}]")


def _ascending_keys(v):
    return [] if all(a < b for a, b in zip(v, v[1:])) else ["not ascending"]


REGISTRY = M(
    ("epoch", UInt()),
    ("bodies", Dict(BODY_KIND, Array(KEY, ascending=True))),
    ("config", Dict(Tstr(), Tstr())),
    ("hybrid", M(("role", UInt(32)), ("stake", UInt(32)), ("trust", UInt(32)))),
    ("policy", Tstr(), "opt"),
    ("members", Dict(KEY, MEMBER)),
    ("role_weights", Dict(ROLE, UInt())),
    ("min_protocol_version", UInt(16)),
    rule=lambda v: [] if all(k == m["key"] for k, m in v["members"].items())
    else ["a member is filed under another key"],
)

TRUST_WEIGHT = {"core": 5000, "trusted": 3000, "standard": 1000, "sandbox": 500, "quarantine": 0}


def charter_registry(c):
    """governance.md §2: version 0, from the charter."""
    return {
        "epoch": 0,
        "members": {m["key"]: m for m in c["members"]},
        "bodies": {b["kind"]: sorted(b["members"]) for b in c["bodies"]},
        "role_weights": {r["role"]: r["weight"] for r in c["role_weights"]},
        "hybrid": c["hybrid"],
        "config": {},
        "min_protocol_version": c["min_protocol_version"],
    }


def registry_hash_bytes(b: bytes) -> bytes:
    return hashlib.sha256(REGISTRY_PREFIX + b).digest()


def weight(reg, m, weighting) -> int:
    """governance.md §4 Weights."""
    if m["trust"] == "quarantine":
        return 0
    role = max((reg["role_weights"].get(r, 0) for r in m["roles"]), default=0)
    stake = m["stake"] * 1000
    trust = TRUST_WEIGHT[m["trust"]]
    if weighting == "one_person_one_vote":
        return 1000
    if weighting == "trust":
        return trust
    if weighting == "stake":
        return stake
    if weighting == "role":
        return role
    h = reg["hybrid"]
    return (h["role"] * role + h["stake"] * stake + h["trust"] * trust) // 1000


def builtin_config(kind):
    """governance.md §3: the built-in default voting configuration."""
    rule = {"supermajority": [2, 3]} if kind in ("constitutional_change", "protocol_upgrade") \
        else "simple_majority"
    return {"rule": rule, "veto": [334, 1000], "quorum": [3, 10], "secret": False, "sponsors": 0,
            "reasoning": False, "weighting": "trust", "early_close": False}


class CertError(Exception):
    def __init__(self, name: str, detail: str = ""):
        super().__init__(f"{name}: {detail}" if detail else name)
        self.name = name


def _envelope(field, hex_str, type_code):
    try:
        raw = bytes.fromhex(hex_str)
    except ValueError:
        raise CertError("Hex", field)
    try:
        msg = decode_envelope(raw)
    except DecodeError as e:
        raise CertError("Message", f"{field}: {e}")
    if msg["type"] != type_code:
        raise CertError("WrongType", field)
    msg["id"] = hashlib.sha256(raw).digest()
    return msg


def verify_certificate(bundle):
    """protocol.md §10, written from the documents alone."""
    if bundle.get("kind") != "kos-certificate/1":
        raise CertError("Kind", repr(bundle.get("kind")))
    ch = _envelope("charter", bundle["charter"], 1)
    charter = ch["body_value"]
    if not any(m["key"] == ch["author"] for m in charter["members"]):
        raise CertError("CharterAuthor")
    federation = ch["id"]
    pr = _envelope("proposal", bundle["proposal"], 2)
    proposal = pr["body_value"]
    if proposal["federation"] != federation:
        raise CertError("Mismatch", "proposal")
    pin = proposal["registry"]["hash"]
    reg = charter_registry(charter)
    if registry_hash_bytes(cbor_encode(reg)) != pin:
        if bundle.get("registry") is None:
            raise CertError("RegistryMissing")
        try:
            raw = bytes.fromhex(bundle["registry"])
        except ValueError:
            raise CertError("Hex", "registry")
        # The bytes are hashed as they are; they must also be exactly the deterministic CBOR of
        # a registry version (no other encoding of the same value).
        try:
            reg = cbor_decode_strict(raw)
            rules: list = []
            REGISTRY.shape(reg, rules, "registry")
            if rules:
                raise InvalidBody("; ".join(rules))
        except (CborMalformed, CborTrailing, CborNonCanonical, BadBody, InvalidBody) as e:
            raise CertError("RegistryEncoding", str(e))
        if registry_hash_bytes(raw) != pin:
            raise CertError("RegistryMismatch")
    config = proposal.get("voting") or next(
        (d["config"] for d in charter["defaults"] if d["kind"] == proposal["kind"]), None
    ) or builtin_config(proposal["kind"])

    def w(k):
        m = reg["members"].get(k)
        return weight(reg, m, config["weighting"]) if m else 0

    eligible = sum(w(k) for k in reg["members"])
    tl = proposal["timeline"]
    close = tl.get("reveal_end_ms", tl["voting_end_ms"])
    grace = charter["timing"]["grace_ms"]
    earliest = (tl["discussion_end_ms"] if config["early_close"] else close) + grace
    slots: dict = {}
    for i, a in enumerate(bundle["attestations"]):
        msg = _envelope("attestation", a, 11)
        att = msg["body_value"]
        if att["federation"] != federation or att["proposal"] != pr["id"]:
            raise CertError("Mismatch", "attestation")
        if w(msg["author"]) == 0:
            raise CertError("NotMember", str(i))
        rnd = att.get("round", 0)
        if msg["created_ms"] < earliest + rnd * grace:
            raise CertError("TooEarly", str(i))
        if att.get("phase", "commit") != "commit":
            continue  # prepares never count
        slot = (rnd, att["revision"], att["votes_root"], att["outcome"], att.get("winner"))
        slots.setdefault(slot, set()).add(msg["author"])
    best = max(((sum(w(k) for k in who), len(who), slot) for slot, who in slots.items()),
               key=lambda x: x[0], default=None)
    if best is None or not (eligible > 0 and best[0] * 3 > eligible * 2):
        raise CertError("NoQuorum", f"{best[0] if best else 0} of {eligible}")
    wt, n, (rnd, revision, root, outcome, winner) = best
    return {"proposal": pr["id"], "round": rnd, "revision": revision, "votes_root": root.hex(),
            "outcome": outcome, "winner": winner, "weight": wt, "eligible": eligible,
            "attesters": n}


def verify_receipt(bundle):
    """protocol.md §10."""
    if bundle.get("kind") != "kos-receipt/1":
        raise CertError("Kind", repr(bundle.get("kind")))
    cert = verify_certificate(bundle["certificate"])
    try:
        raw = bytes.fromhex(bundle["ballot"])
        msg = decode_envelope(raw)
    except (ValueError, DecodeError) as e:
        raise CertError("Message", f"ballot: {e}")
    if msg["type"] not in (7, 8):
        raise CertError("WrongType", "ballot")
    if msg["body_value"]["proposal"] != cert["proposal"]:
        raise CertError("Mismatch", "ballot")
    ballot = hashlib.sha256(raw).digest()
    node = hashlib.sha256(b"\x00" + ballot).digest()
    for step in bundle["proof"]:
        sib = bytes.fromhex(step["sibling"])
        node = hashlib.sha256(b"\x01" + (sib + node if step["left"] else node + sib)).digest()
    if node.hex() != cert["votes_root"]:
        raise CertError("NotIncluded")
    return {"voter": did_key(msg["author"]), "ballot": ballot.hex(), "certificate": cert}


# ---------------------------------------------------------------------------------------------
# The checks
# ---------------------------------------------------------------------------------------------


def expect_error(name: str, data: bytes, want: str):
    try:
        decode_envelope(data)
    except DecodeError as e:
        return check(name, e.name == want, f"refused with {e}, want {want}")
    return check(name, False, f"accepted, want {want}")


def run(vectors_path: Path):
    V = json.loads(vectors_path.read_text())
    H = bytes.fromhex

    # --- CBOR self-tests (examples quoted in §1.1 / §4.9) -------------------------------------
    check_eq("cbor: 23 -> 17", cbor_encode(23), "17")
    check_eq("cbor: 24 -> 1818", cbor_encode(24), "1818")
    check_eq("cbor: 500 -> 1901f4", cbor_encode(500), "1901f4")
    check_eq('cbor: "no" -> 626e6f (§4.9)', cbor_encode("no"), "626e6f")
    check_eq("cbor: externally tagged {\"approve\": [0, 2]}",
             cbor_encode({"approve": [0, 2]}), "a167617070726f76658200" + "02")
    for label, bad, exc in [
        ("non-shortest uint", "1817", CborNonCanonical),
        ("indefinite array", "9f01ff", CborNonCanonical),
        ("map keys out of order", "a2616201616101", CborNonCanonical),
        ("duplicate map key", "a2616101616102", CborNonCanonical),
        ("float", "f93c00", CborMalformed),
        ("tag", "c240", CborMalformed),
        ("undefined", "f7", CborMalformed),
        ("truncated bstr", "4201", CborMalformed),
        ("trailing byte", "0000", CborTrailing),
        ("invalid UTF-8", "61ff", CborMalformed),
    ]:
        try:
            cbor_decode_strict(H(bad))
            check(f"cbor strict decoder refuses {label}", False, "accepted")
        except (CborMalformed, CborTrailing, CborNonCanonical) as e:
            check(f"cbor strict decoder refuses {label}", isinstance(e, exc), f"raised {type(e).__name__}")

    # --- RFC 9180 A.1.1 DeriveKeyPair (same KEM, DHKEM(X25519, HKDF-SHA256)): independent anchor
    for who, ikm, sk_want, pk_want in [
        ("E", "7268600d403fce431561aef583ee1613527cff655c1343f29812e66706df3234",
         "52c4a758a802cd8b936eceea314432798d5baf2d7e9235dc084ab1b9cfa2f736",
         "37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431"),
        ("R", "6db9df30aa07dd42ee5e8181afdb977e538f5e1fec8a06223f33f7013e525037",
         "4612c550263fc8ad58375df3f557aac531d26850903e55a9f23f21d8534e8ac8",
         "3948cfe0ad1ddb695d780e59077195da6c56506b027329794ab02bca80815c4d"),
    ]:
        sk, pk = derive_key_pair(H(ikm))
        check(f"RFC 9180 A.1.1 DeriveKeyPair(ikm{who})", sk.hex() == sk_want and pk.hex() == pk_want,
              f"got {sk.hex()} / {pk.hex()}")

    # --- §4: "listed here in deterministic order" -----------------------------------------------
    def walk_maps(s, seen):
        if id(s) in seen:
            return
        seen.add(id(s))
        if isinstance(s, Map):
            yield s
            for _, f, _ in s.fields:
                yield from walk_maps(f, seen)
        elif isinstance(s, Array):
            yield from walk_maps(s.item, seen)
        elif isinstance(s, Enum):
            for x in s.data.values():
                yield from walk_maps(x, seen)
        elif isinstance(s, Tuple):
            for x in s.items:
                yield from walk_maps(x, seen)

    seen: set = set()
    for code, (tname, sch) in BODIES.items():
        for m in walk_maps(sch, seen):
            listed = [f[0] for f in m.fields]
            canon = sorted(listed, key=lambda k: _key_order(cbor_encode(k)))
            check(f"§4 {tname}: keys {listed[:3]}... are listed in deterministic order",
                  listed == canon, f"canonical order is {canon}")

    # --- §2 identities ------------------------------------------------------------------------
    for idv in V["identities"]:
        seed = H(idv["seed"])
        tag = f"identity {idv['seed'][:8]}…"
        pk = ed_public_key(seed)
        check_eq(f"{tag}: Ed25519 public key", pk, idv["public_key"])
        check_eq(f"{tag}: did:key", did_key(pk), idv["did"])
        check_eq(f"{tag}: KLP-ID", klp_id(pk), idv["klp_id"])
        check(f"{tag}: KLP-ID round-trips through the strict decoder",
              b32decode_lower_nopad(idv["klp_id"]) == hashlib.sha256(pk).digest()[:16])
        check(f"{tag}: KLP-ID upper case refused", not is_klp_id(idv["klp_id"].upper()))
        check_eq(f"{tag}: libp2p PeerId", peer_id(pk), idv["peer_id"])
        check(f"{tag}: PeerId parses as a peer:// host", is_peer_id(idv["peer_id"]))
        check_eq(f"{tag}: X25519 public key (§5.1)", x25519_from_seed(seed)[1], idv["x25519_public_key"])
        check(f"{tag}: public key is a valid, not small-order point", ed_valid_key(pk))

    # §2.2 example column (seed 000102…1f)
    pk1 = ed_public_key(bytes(range(32)))
    check_eq("§2.2 example did:key", did_key(pk1), "did:key:z6MkehRgf7yJbgaGfYsdoAsKdBPE3dj2CYhowQdcjqSJgvVd")
    check_eq("§2.2 example KLP-ID", klp_id(pk1), "kzdvvj2umnduyauf35o36k6kw4")
    check_eq("§2.2 example PeerId", peer_id(pk1), "12D3KooWA4Xop1JaT3MHxwYMkCepYsv4iPVopMXwCz5iHYdBfeSB")
    x1 = x25519_from_seed(bytes(range(32)))[1].hex()
    check("§2.2 example X25519 key 0c44597b…517d4d", x1.startswith("0c44597b") and x1.endswith("517d4d"), x1)
    check_eq("§3.2 signing prefix hex", SIGN_PREFIX, "6b6f732d6b6c702d76312f656e76656c6f706500")

    # --- §3 envelopes -------------------------------------------------------------------------
    for ev in V["envelopes"]:
        tag = f"envelope {ev['name']}"
        seed = H(ev["author_seed"])
        code = ev["type_code"]
        check_eq(f"{tag}: type name -> code (§3.4)", TYPE_CODES.get(ev["type"]), code)
        body = H(ev["body_hex"])
        body_from_diag = cbor_encode(parse_diag(ev["body_diagnostic"]))
        check_eq(f"{tag}: body re-encoded from body_diagnostic", body_from_diag, body)
        header, si, sig, env, mid = build_envelope(seed, code, ev["seq"], ev["created_ms"], ev["target"], body)
        check_eq(f"{tag}: header_hex", header, ev["header_hex"])
        check_eq(f"{tag}: header re-encoded from header_diagnostic",
                 cbor_encode(parse_diag(ev["header_diagnostic"])), ev["header_hex"])
        check_eq(f"{tag}: signing_input_hex", si, ev["signing_input_hex"])
        check_eq(f"{tag}: signature_hex", sig, ev["signature_hex"])
        check_eq(f"{tag}: envelope_hex", env, ev["envelope_hex"])
        check_eq(f"{tag}: id_hex", mid, ev["id_hex"])
        try:
            msg = decode_envelope(H(ev["envelope_hex"]))
            check(f"{tag}: accepted by the §3.5 decoder", True)
            check(f"{tag}: decoded fields match",
                  msg["type"] == code and msg["seq"] == ev["seq"] and msg["created_ms"] == ev["created_ms"]
                  and msg["target"] == ev["target"] and msg["author"] == ed_public_key(seed)
                  and msg["body"] == body)
        except DecodeError as e:
            check(f"{tag}: accepted by the §3.5 decoder", False, str(e))

    # VOTE body built by hand from §4.8 (keys written in the §4.8 order; encoder must agree).
    vote_body_struct = {
        "choice": "yes",
        "reason": "Lower fees help small members.",
        "proposal": b"\x22" * 32,
        "revision": 0,
        "federation": b"\x11" * 32,
    }
    vote_vec = next(e for e in V["envelopes"] if e["name"] == "vote")
    vote_bytes = cbor_encode(vote_body_struct)
    check_eq("VOTE body built from §4.8 structure", vote_bytes, vote_vec["body_hex"])
    # Hand-serialise in the listed order without any sorting, to confirm "an encoder that writes
    # them as listed is correct" (§4).
    unsorted = _head(5, len(vote_body_struct)) + b"".join(
        cbor_encode(k) + cbor_encode(x) for k, x in vote_body_struct.items())
    check_eq("VOTE body written in §4.8 listed order without sorting", unsorted, vote_vec["body_hex"])
    # Other bodies constructed by hand from §4.
    hand = {
        "comment": {"kind": "objection", "text": "120 is too high for small nodes.",
                    "proposal": b"\x22" * 32, "revision": 0, "federation": b"\x11" * 32},
        "delegation": {"scope": {"kind": "configuration"}, "delegate": pk1, "federation": b"\x11" * 32},
        "task_request": {"inputs": ["Generate short poem about sunrise"], "task_id": "xyz123",
                         "min_trust": "trusted"},
        "task_result": {"ok": True, "outputs": ["Light spills over the hill."],
                        "request": b"\x33" * 32, "task_id": "xyz123"},
        "directory_record": {"name": "alice.example", "types": [257, 258, 261],
                             "x25519": x25519_from_seed(bytes(range(32)))[1],
                             "addresses": ["/ip4/127.0.0.1/tcp/4001"],
                             "expires_ms": 1_700_003_600_000},
    }
    for name, struct in hand.items():
        e = next(x for x in V["envelopes"] if x["name"] == name)
        check_eq(f"{name.upper()} body built from §4 structure", cbor_encode(struct), e["body_hex"])

    # §3.6 worked example claims
    check_eq("§3.6 VOTE body is 149 bytes", len(vote_bytes), 149)
    vh = H(vote_vec["header_hex"])
    check_eq("§3.6 VOTE header is 199 bytes", len(vh), 199)
    check("§3.6 header prefix 87 01 07 58 20 <author> 01 1b 0000018bcfe56800 f6 58 95",
          vh.startswith(H("8701075820") + ed_public_key(b"\x02" * 32) + H("011b0000018bcfe56800f65895")))
    venv = H(vote_vec["envelope_hex"])
    check_eq("§3.6 VOTE envelope is 268 bytes", len(venv), 268)
    check("§3.6 envelope layout 82 58 c7 <header> 58 40 <signature>",
          venv == H("8258c7") + vh + H("5840") + H(vote_vec["signature_hex"]))
    check_eq("§3.6 id", hashlib.sha256(venv).hexdigest(),
             "9e9cba2f00edb79de7811c1abcf8b147e985e45d1bb3f2b5c0a0ab32b1269812")
    sig_hex = vote_vec["signature_hex"]
    check("§3.6 signature e2f7b614…0afca208", sig_hex.startswith("e2f7b614") and sig_hex.endswith("0afca208"))

    # --- §5 sealed -----------------------------------------------------------------------------
    for i, sv in enumerate(V["sealed"]):
        tag = f"sealed[{i}]"
        sender = H(sv["sender_seed"])
        author = ed_public_key(sender)
        sk_r, pk_r = x25519_from_seed(H(sv["recipient_seed"]))
        check_eq(f"{tag}: recipient X25519 key from seed", pk_r, sv["recipient_x25519_public_key"])
        check_eq(f"{tag}: info", sv["info"].encode(), SEAL_INFO)
        aad = cbor_encode([1, 513, author, sv["seq"], sv["created_ms"], sv["target"]])
        check_eq(f"{tag}: aad", aad, sv["aad_hex"])
        inner_t, inner_b = parse_diag(sv["plaintext_diagnostic"])
        check_eq(f"{tag}: inner type", inner_t, TYPE_CODES[sv["inner_type"]])
        pt = cbor_encode([inner_t, inner_b])
        check_eq(f"{tag}: plaintext", pt, sv["plaintext_hex"])
        enc, ct = seal_base(pk_r, SEAL_INFO, aad, pt, H(sv["ephemeral_ikm"]))
        check_eq(f"{tag}: enc = DeriveKeyPair(ephemeral_ikm).pk", enc, sv["enc"])
        check_eq(f"{tag}: ciphertext", ct, sv["ciphertext_hex"])
        body = cbor_encode({"ct": ct, "enc": enc})
        header, si, sig, env, mid = build_envelope(sender, 513, sv["seq"], sv["created_ms"], sv["target"], body)
        check_eq(f"{tag}: header re-encoded from header_diagnostic",
                 cbor_encode(parse_diag(sv["header_diagnostic"])), header)
        check_eq(f"{tag}: envelope", env, sv["envelope_hex"])
        check_eq(f"{tag}: id", mid, sv["id_hex"])
        try:
            msg = decode_envelope(H(sv["envelope_hex"]))
            check(f"{tag}: accepted by the §3.5 decoder", True)
        except DecodeError as e:
            check(f"{tag}: accepted by the §3.5 decoder", False, str(e))
            continue
        try:
            t, b, _, opened = open_sealed(msg, sk_r)
            check_eq(f"{tag}: OpenBase plaintext", opened, sv["plaintext_hex"])
            check(f"{tag}: opened inner message is {sv['inner_type']} with the expected body",
                  t == inner_t and b == inner_b)
        except (InvalidTag, ValueError, BadBody, InvalidBody, CborMalformed, CborTrailing, CborNonCanonical) as e:
            check(f"{tag}: OpenBase", False, repr(e))
        # Opening with another key must fail authentication.
        try:
            open_sealed(msg, x25519_from_seed(sender)[0])
            check(f"{tag}: opening with the wrong key fails", False, "opened")
        except InvalidTag:
            check(f"{tag}: opening with the wrong key fails", True)

    # --- §4.9 vote commitments -------------------------------------------------------------------
    for i, cv in enumerate(V["vote_commitments"]):
        tag = f"vote_commitments[{i}]"
        voter = ed_public_key(H(cv["voter_seed"]))
        choice_cbor = cbor_encode("no")
        check_eq(f"{tag}: CBOR(choice)", choice_cbor, cv["choice_cbor_hex"])
        c = hashlib.sha256(
            b"kos-klp-v1/vote-commit\x00" + H(cv["federation"]) + H(cv["proposal"]) + voter
            + cv["revision"].to_bytes(4, "big") + H(cv["salt"]) + H(cv["choice_cbor_hex"])
        ).digest()
        check_eq(f"{tag}: commitment", c, cv["commitment"])

    # --- §3.5 rejections -------------------------------------------------------------------------
    for rv in V["rejections"]:
        expect_error(f"rejection '{rv['name']}' -> {rv['error']}", H(rv["envelope_hex"]), rv["error"])

    # --- §3.5 further refusals built from the document alone (self-consistency, not vectors) --
    seed2 = b"\x02" * 32
    author2 = ed_public_key(seed2)
    vbody = H(vote_vec["body_hex"])

    def signed(type_code, target, body, version=1, author=None, seed=seed2):
        a = author if author is not None else ed_public_key(seed)
        hdr = cbor_encode([version, type_code, a, 1, 1700000000000, target, body])
        return cbor_encode([hdr, ed_sign(seed, signing_input(version & 0xFFFF, type_code & 0xFFFF, hdr))])

    expect_error("self: 61 441 bytes -> TooLarge", b"\x00" * 61441, "TooLarge")
    expect_error("self: version 2 -> UnsupportedVersion", signed(7, None, vbody, version=2), "UnsupportedVersion")
    expect_error("self: type 14 -> UnknownType", signed(14, None, vbody), "UnknownType")
    expect_error("self: 31-byte author -> FieldLength", signed(7, None, vbody, author=author2[:31]), "FieldLength")
    expect_error("self: small-order author -> InvalidAuthor",
                 signed(7, None, vbody, author=(1).to_bytes(32, "little")), "InvalidAuthor")
    expect_error("self: bad target -> InvalidTarget", signed(7, "klp://-bad-", vbody), "InvalidTarget")
    expect_error("self: upper-case name -> NonCanonicalTarget", signed(7, "klp://Example.org/x", vbody),
                 "NonCanonicalTarget")
    sealed_body = cbor_encode({"ct": b"\x00" * 16, "enc": b"\x00" * 32})
    expect_error("self: SEALED without target -> MissingTarget", signed(513, None, sealed_body), "MissingTarget")
    expect_error("self: body with unknown key -> BadBody",
                 signed(7, None, cbor_encode({**vote_body_struct, "extra": 1})), "BadBody")
    expect_error("self: reason of 2001 characters -> InvalidBody",
                 signed(7, None, cbor_encode({**vote_body_struct, "reason": "x" * 2001})), "InvalidBody")
    expect_error("self: header with trailing byte -> TrailingBytes",
                 cbor_encode([header_bytes(7, author2, 1, 0, None, vbody) + b"\x00", b"\x00" * 64]),
                 "TrailingBytes")
    # --- §8.3 direct messages and §8.4 directory keys ------------------------------------------
    for r in V["direct_responses"]:
        check_eq(f"direct response [{r['code']}, …] (§8.3)", cbor_encode([r["code"], r["reason"]]), r["cbor_hex"])
    for d in V["directory_keys"]:
        check_eq("directory key by KLP-ID (§8.4)", ("/kos/dir/id/" + d["klp_id"]).encode(), d["id_key_hex"])
        check_eq("directory key by name (§8.4)", ("/kos/dir/name/" + d["name"]).encode(), d["name_key_hex"])
        check_eq("the KLP-ID is the author's of the directory_record vector", d["klp_id"], klp_id(pk1))

    # --- §4.17 agent bundles ----------------------------------------------------------------------
    for ab in V["agent_bundles"]:
        check_eq("agent bundle snapshot (§4.17)", cbor_encode({"audit": ab["audit"], "config": ab["config"]}),
                 ab["snapshot_hex"])
        h = b"\x00" * 32
        for r in ab["audit"]:
            h = hashlib.sha256(b"kos-klp-v1/agent-audit\x00" + h + r["at_ms"].to_bytes(8, "big")
                               + r["event"].encode()).digest()
        check_eq("agent audit root (§4.17)", h, ab["audit_root"])

    # --- governance.md §2: the registry, from the CHARTER vector --------------------------------
    reg_path = vectors_path.parent / "registry-v1.json"
    R = json.loads(reg_path.read_text())
    ch = next(e for e in V["envelopes"] if e["name"] == "charter")
    charter = cbor_decode_strict(H(ch["body_hex"]))

    def registry_of(c, epoch=0, config=None, policy=None, trust_changes=None):
        members = {}
        for m in c["members"]:
            m = dict(m)
            if trust_changes and m["key"] in trust_changes:
                m["trust"] = trust_changes[m["key"]]
            members[m["key"]] = m
        reg = {
            "epoch": epoch,
            "members": members,
            "bodies": {b["kind"]: sorted(b["members"]) for b in c["bodies"]},
            "role_weights": {r["role"]: r["weight"] for r in c["role_weights"]},
            "hybrid": c["hybrid"],
            "config": config or {},
            "min_protocol_version": c["min_protocol_version"],
        }
        if policy is not None:
            reg["policy"] = policy
        return reg

    def registry_hash(reg):
        return hashlib.sha256(b"kos-klp-v1/registry\x00" + cbor_encode(reg)).hexdigest()

    r0 = next(r for r in R["registries"] if r["name"] == "charter_0")
    reg0 = registry_of(charter)
    check_eq("registry of the charter vector: CBOR (governance.md §2)", cbor_encode(reg0), r0["cbor_hex"])
    check_eq("registry of the charter vector: hash", registry_hash(reg0), r0["hash_hex"])
    r2 = next(r for r in R["registries"] if r["name"] == "epoch_2")
    last_key = sorted(m["key"] for m in charter["members"])[-1]
    reg2 = registry_of(charter, 2, {"max_agents": "120", "fee": "3"},
                       "[types]\ndeny = [\"AGENT_MIGRATION\"]\n", {last_key: "trusted"})
    check_eq("registry epoch 2 (config, policy, a changed member): CBOR", cbor_encode(reg2), r2["cbor_hex"])
    check_eq("registry epoch 2: hash", registry_hash(reg2), r2["hash_hex"])

    # --- protocol.md §10: certificate files pinned after epoch 0, and a receipt -----------------
    C = json.loads((vectors_path.parent / "certificate-v1.json").read_text())
    creg = C["registry"]
    creg_bytes = H(creg["cbor_hex"])
    check_eq("certificate vector: registry length", len(creg_bytes), creg["len"])
    check_eq("certificate vector: SHA-256(prefix ‖ registry bytes)", registry_hash_bytes(creg_bytes),
             creg["hash_hex"])
    check_eq("certificate vector: registry bytes re-encoded from its diagnostic",
             cbor_encode(parse_diag(creg["diagnostic"])), creg_bytes)
    try:
        cbor_decode_strict(creg_bytes)
        check("certificate vector: registry bytes are deterministic CBOR (byte-string keys)", True)
    except (CborMalformed, CborTrailing, CborNonCanonical) as e:
        check("certificate vector: registry bytes are deterministic CBOR (byte-string keys)", False, str(e))
    old_bytes = H(creg["struct_order"]["cbor_hex"])
    check("certificate vector: the struct-order encoding hashes elsewhere",
          registry_hash_bytes(old_bytes).hex() == creg["struct_order"]["hash_hex"] != creg["hash_hex"])
    roles_kept = [m["roles"] for m in cbor_decode_strict(creg_bytes)["members"].values()]
    check("certificate vector: a member's roles keep the charter's order (not sorted)",
          ["validator", "citizen"] in roles_kept, repr(roles_kept))
    for cv in C["certificates"]:
        tag = f"certificate '{cv['name']}'"
        try:
            got = verify_certificate(cv["bundle"])
        except CertError as e:
            check(f"{tag} -> {'valid' if cv['valid'] else cv['error']}",
                  not cv["valid"] and e.name == cv["error"], f"refused with {e}")
            continue
        want = {k: cv[k] for k in ("round", "revision", "votes_root", "outcome", "winner", "weight",
                                   "eligible", "attesters")} if cv["valid"] else None
        got.pop("proposal")
        check(f"{tag} -> {'valid' if cv['valid'] else cv['error']}", got == want,
              f"accepted as {got}, want {want or cv['error']}")
    for rv in C["receipts"]:
        tag = f"receipt '{rv['name']}'"
        try:
            got = verify_receipt(rv["bundle"])
            check(f"{tag} verifies", got["voter"] == rv["voter"] and got["ballot"] == rv["ballot"],
                  repr(got))
        except CertError as e:
            check(f"{tag} verifies", False, str(e))
        forged = {**rv["bundle"], "proof": []}
        try:
            verify_receipt(forged)
            check(f"{tag}: without its path it is refused", False, "accepted")
        except CertError as e:
            check(f"{tag}: without its path it is refused", e.name == "NotIncluded", str(e))
    # An attestation that writes out its default phase or round is not deterministic (§4.12).
    att_hex = C["certificates"][1]["bundle"]["attestations"][0]
    att_body = decode_envelope(H(att_hex))["body_value"]
    check("round-0 commit in the format without phase and round decodes",
          "phase" not in att_body and "round" not in att_body)
    for label, extra in (("phase commit", {"phase": "commit"}), ("round 0", {"round": 0})):
        body = cbor_encode({**att_body, **extra})
        expect_error(f"self: TALLY_ATTESTATION with explicit {label} -> BadBody",
                     signed(11, None, body), "BadBody")

    ok_addrs = ["klp://ni4ahvpqlgicuhdnv66jxjdssi/tasks", "agent://ni4ahvpqlgicuhdnv66jxjdssi",
                "peer://" + peer_id(pk1), "klp://example.org", "agent://a-b.c0"]
    for a in ok_addrs:
        try:
            check(f"self: address {a} is valid and canonical", format_address(parse_address(a)) == a)
        except AddressError as e:
            check(f"self: address {a} is valid and canonical", False, str(e))


def main():
    default = Path(__file__).resolve().parents[2] / "docs" / "vectors" / "klp-v1.json"
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    try:
        run(path)
    except Exception as e:  # a crash is a failure, not a pass
        import traceback

        traceback.print_exc()
        check("checker ran to completion", False, repr(e))
    print(f"{PASSED} passed, {FAILED} failed")
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
