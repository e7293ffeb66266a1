//! How managers encode what only managers read: the Raft log's entries, snapshots, Raft's
//! requests and forwarded writes (none of whose types nests: postcard has no depth limit, so a
//! type that nests without bound, such as openraft's errors in Raft's replies, stays JSON, whose
//! parser stops at 128 levels). Postcard (compact, binary, no field names) behind a one-byte mark, so that what
//! was written as JSON before (a store of an earlier version, a peer not yet upgraded) still
//! reads: JSON never starts with [`MARK`], a UTF-8 continuation byte.
//!
//! Stored values are bytes; JSON wrote each as a decimal number (a 1 KiB task record became
//! about 3.6 KiB in the log, and a snapshot of one held each byte twice over, as numbers of the
//! numbers). Postcard writes them as they are.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The first byte of everything encoded here.
pub const MARK: u8 = 0xB1;

/// `v` encoded: [`MARK`], then postcard.
pub fn encode<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, String> {
    let mut out = vec![MARK];
    postcard::to_io(v, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Decodes what [`encode`] wrote, or JSON (an earlier version's encoding). The whole input must
/// be one value.
pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    match b.split_first() {
        Some((&MARK, rest)) => {
            let (v, left) = postcard::take_from_bytes(rest).map_err(|e| e.to_string())?;
            if !left.is_empty() {
                return Err(format!("{} bytes after the value", left.len()));
            }
            Ok(v)
        }
        _ => serde_json::from_slice(b).map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Check, Op, Request};

    #[test]
    fn requests_round_trip_and_earlier_json_still_reads() {
        let r = Request {
            checks: vec![Check::Is {
                key: "k".into(),
                value: Some(vec![0, 255, 7]),
            }],
            ops: vec![
                Op::Put {
                    key: "tasks/web/1".into(),
                    value: br#"{"id":"1"}"#.to_vec(),
                },
                Op::Delete { key: "x".into() },
            ],
        };
        let b = encode(&r).unwrap();
        assert_eq!(b[0], MARK);
        // Bytes are written as they are, not as numbers.
        assert!(b.len() < 40, "{}", b.len());
        assert_eq!(decode::<Request>(&b).unwrap(), r);
        assert_eq!(decode::<Request>(&serde_json::to_vec(&r).unwrap()).unwrap(), r);
        // Trailing bytes, a cut value, nothing: refused.
        let mut long = b.clone();
        long.push(0);
        assert!(decode::<Request>(&long).is_err());
        assert!(decode::<Request>(&b[..b.len() - 1]).is_err());
        assert!(decode::<Request>(&[]).is_err());
        // A snapshot's map, as an earlier version wrote it (values as numbers).
        let old: std::collections::BTreeMap<String, Vec<u8>> = [("a".to_owned(), vec![1, 2, 250])].into();
        let map: std::collections::BTreeMap<String, serde_bytes::ByteBuf> = decode(&serde_json::to_vec(&old).unwrap()).unwrap();
        assert_eq!(map["a"].as_slice(), &[1, 2, 250]);
        // A length far beyond the input reserves nothing: refused, not an allocation.
        assert!(decode::<Request>(&[MARK, 0, 1, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }
}
