//! Strict CBOR helpers: every KLP structure is encoded with RFC 8949 core deterministic encoding
//! (definite lengths, shortest integer and length heads, map keys in length-then-bytewise order),
//! and a decoder accepts a structure only if re-encoding it yields exactly the input bytes.
//!
//! Checking by re-encoding gives one rule that covers every way a non-canonical encoding can
//! differ (long-form heads, indefinite lengths, reordered or duplicated keys, explicit `null` for
//! an absent optional field, unknown keys), so a signed message has exactly one byte encoding.

use serde::{Serialize, de::DeserializeOwned};

/// Maximum nesting depth accepted by the decoder. KLP structures nest at most 6 levels.
pub(crate) const MAX_DEPTH: usize = 16;

/// Why strict decoding refused some bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CborError {
    /// The bytes are not CBOR of the expected shape.
    #[error("malformed CBOR: {0}")]
    Malformed(String),
    /// A complete item was decoded but bytes remained after it.
    #[error("{0} trailing byte(s) after the CBOR item")]
    TrailingBytes(usize),
    /// The item decoded, but its bytes are not the deterministic encoding of its value.
    #[error("CBOR item is not in deterministic (canonical) encoding")]
    NonCanonical,
}

/// Encodes `value` into CBOR. Our types only hold integers, byte and text strings, arrays and
/// maps, so encoding into a `Vec` cannot fail.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    if let Err(e) = ciborium::into_writer(value, &mut out) {
        // Writing into a Vec is infallible and our types contain no unsupported values (no
        // floats, no non-string map keys); reaching this is a programming error.
        unreachable!("CBOR encoding into memory failed: {e}");
    }
    out
}

/// Encodes `value` into the deterministic CBOR of `docs/protocol.md` §1.1 whatever its Rust
/// shape: every map's entries sorted by their encoded keys (shorter first, then bytewise), and
/// entries whose value is `null` (an absent optional field) omitted. For structures that are
/// hashed but do not travel (the registry, `docs/governance.md` §2), so that another
/// implementation can compute the same bytes from the document alone.
pub fn to_vec_deterministic<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    fn canonical(v: ciborium::Value) -> ciborium::Value {
        use ciborium::Value;
        match v {
            Value::Map(entries) => {
                let mut keyed: Vec<(Vec<u8>, Value, Value)> = entries
                    .into_iter()
                    .filter(|(_, val)| !val.is_null())
                    .map(|(k, val)| {
                        let k = canonical(k);
                        (to_vec(&k), k, canonical(val))
                    })
                    .collect();
                keyed.sort_by(|a, b| a.0.len().cmp(&b.0.len()).then_with(|| a.0.cmp(&b.0)));
                Value::Map(keyed.into_iter().map(|(_, k, v)| (k, v)).collect())
            }
            Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
            other => other,
        }
    }
    match ciborium::Value::serialized(value) {
        Ok(v) => to_vec(&canonical(v)),
        // Our types hold only integers, strings, arrays and maps (see `to_vec`).
        Err(e) => unreachable!("CBOR value conversion failed: {e}"),
    }
}

/// Decodes exactly one CBOR item of type `T` from `bytes`, refusing trailing bytes and any
/// encoding that is not the canonical one.
pub fn from_slice_canonical<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Result<T, CborError> {
    decode(bytes, None)
}

/// [`from_slice_canonical`] for a value encoded as an array of exactly `len` items (serde
/// tuples do not check their length against the input's).
pub(crate) fn from_slice_canonical_array<T: Serialize + DeserializeOwned>(
    bytes: &[u8],
    len: usize,
) -> Result<T, CborError> {
    decode(bytes, Some(len))
}

fn decode<T: Serialize + DeserializeOwned>(
    bytes: &[u8],
    array_len: Option<usize>,
) -> Result<T, CborError> {
    // Parse the generic item first: this checks the CBOR itself (heads, lengths, nesting) and
    // finds where the item ends, independently of the target type.
    let mut reader = bytes;
    let item: ciborium::Value =
        ciborium::de::from_reader_with_recursion_limit(&mut reader, MAX_DEPTH)
            .map_err(|e| CborError::Malformed(describe(e)))?;
    if !reader.is_empty() {
        return Err(CborError::TrailingBytes(reader.len()));
    }
    // Then its shape: the fields and types of `T`.
    if let Some(len) = array_len {
        match &item {
            ciborium::Value::Array(items) if items.len() == len => {}
            _ => return Err(CborError::Malformed(format!("expected an array of {len} items"))),
        }
    }
    let value: T = item.deserialized().map_err(|e| CborError::Malformed(shape(e)))?;
    // Finally the encoding: exactly one byte string encodes each value.
    if to_vec(&value) != bytes {
        return Err(CborError::NonCanonical);
    }
    Ok(value)
}

fn shape(e: ciborium::value::Error) -> String {
    match e {
        ciborium::value::Error::Custom(m) => m,
    }
}

fn describe<E: std::fmt::Debug>(e: ciborium::de::Error<E>) -> String {
    match e {
        ciborium::de::Error::Io(e) => format!("truncated input ({e:?})"),
        ciborium::de::Error::Syntax(offset) => format!("syntax error at byte {offset}"),
        ciborium::de::Error::Semantic(offset, msg) => match offset {
            Some(o) => format!("{msg} (at byte {o})"),
            None => msg,
        },
        ciborium::de::Error::RecursionLimitExceeded => {
            format!("nesting deeper than {MAX_DEPTH} levels")
        }
    }
}

/// Serde helpers for fixed-length byte strings (`bstr` of exactly `N` bytes).
pub(crate) mod fixed_bytes {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(crate) fn serialize<S: Serializer, const N: usize>(
        v: &[u8; N],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        let buf = serde_bytes::ByteBuf::deserialize(d)?;
        <[u8; N]>::try_from(buf.as_slice()).map_err(|_| {
            D::Error::custom(format!(
                "byte string of length {} where {N} bytes are required",
                buf.len()
            ))
        })
    }
}

/// RFC 8949 §8 diagnostic notation of one CBOR item (for people and tools, e.g. `kosctl decode`
/// and the test vectors). Byte strings are written `h'…'`.
pub fn diagnostic(bytes: &[u8]) -> Result<String, CborError> {
    let mut reader = bytes;
    let item: ciborium::Value =
        ciborium::de::from_reader_with_recursion_limit(&mut reader, MAX_DEPTH)
            .map_err(|e| CborError::Malformed(describe(e)))?;
    if !reader.is_empty() {
        return Err(CborError::TrailingBytes(reader.len()));
    }
    let mut out = String::new();
    write_diag(&item, &mut out);
    Ok(out)
}

fn write_diag(v: &ciborium::Value, out: &mut String) {
    use ciborium::Value;
    use std::fmt::Write;
    match v {
        Value::Integer(i) => {
            let _ = write!(out, "{}", i128::from(*i));
        }
        Value::Bytes(b) => {
            out.push_str("h'");
            b.iter().for_each(|x| {
                let _ = write!(out, "{x:02x}");
            });
            out.push('\'');
        }
        Value::Text(t) => {
            let _ = write!(out, "{t:?}");
        }
        Value::Bool(b) => {
            let _ = write!(out, "{b}");
        }
        Value::Null => out.push_str("null"),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_diag(item, out);
            }
            out.push(']');
        }
        Value::Map(entries) => {
            out.push('{');
            for (i, (k, v)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_diag(k, out);
                out.push_str(": ");
                write_diag(v, out);
            }
            out.push('}');
        }
        Value::Float(f) => {
            let _ = write!(out, "{f:?}");
        }
        Value::Tag(t, inner) => {
            let _ = write!(out, "{t}(");
            write_diag(inner, out);
            out.push(')');
        }
        _ => out.push_str("undefined"),
    }
}
