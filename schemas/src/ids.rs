//! Trace and span identifiers: fixed-size byte arrays shown as lowercase hex, the way
//! OTLP/JSON, W3C `traceparent` and Jaeger print them.

use std::fmt;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("{what} must be {expected} hex characters, got {got} characters")]
    Length {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{what} is not hex: {value:?}")]
    NotHex { what: &'static str, value: String },
    #[error("{what} must be {expected} bytes, got {got} bytes")]
    Bytes {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{what} is all zeros, which OTLP defines as invalid")]
    Zero { what: &'static str },
}

macro_rules! fixed_id {
    ($name:ident, $len:expr, $what:expr) => {
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            pub const LEN: usize = $len;

            /// Parses lowercase or uppercase hex; shorter Jaeger-style ids are left-padded with zeros.
            pub fn from_hex(s: &str) -> Result<Self, IdError> {
                let s = s.trim();
                if s.is_empty() || s.len() > $len * 2 {
                    return Err(IdError::Length {
                        what: $what,
                        expected: $len * 2,
                        got: s.len(),
                    });
                }
                let padded = format!("{:0>width$}", s, width = $len * 2);
                let mut out = [0u8; $len];
                for (i, chunk) in padded.as_bytes().chunks(2).enumerate() {
                    let hi = hex_val(chunk[0]);
                    let lo = hex_val(chunk[1]);
                    match (hi, lo) {
                        (Some(h), Some(l)) => out[i] = (h << 4) | l,
                        _ => {
                            return Err(IdError::NotHex {
                                what: $what,
                                value: s.to_string(),
                            });
                        }
                    }
                }
                Ok(Self(out))
            }

            /// Takes raw bytes (OTLP protobuf); all-zero ids are invalid per the OTLP spec.
            pub fn from_bytes(b: &[u8]) -> Result<Self, IdError> {
                let arr: [u8; $len] = b.try_into().map_err(|_| IdError::Bytes {
                    what: $what,
                    expected: $len,
                    got: b.len(),
                })?;
                if arr.iter().all(|&x| x == 0) {
                    return Err(IdError::Zero { what: $what });
                }
                Ok(Self(arr))
            }

            pub fn to_hex(&self) -> String {
                let mut s = String::with_capacity($len * 2);
                for b in self.0 {
                    s.push(HEX[(b >> 4) as usize] as char);
                    s.push(HEX[(b & 0xf) as usize] as char);
                }
                s
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.to_hex())
            }
        }
    };
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fixed_id!(TraceId, 16, "trace id");
fixed_id!(SpanId, 8, "span id");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_padding() {
        let t = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        assert_eq!(t.to_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let short = TraceId::from_hex("a3ce929d0e0e4736").unwrap();
        assert_eq!(short.to_hex(), "0000000000000000a3ce929d0e0e4736");
        assert!(matches!(
            TraceId::from_hex("xyz"),
            Err(IdError::NotHex { .. })
        ));
        assert!(matches!(
            SpanId::from_bytes(&[1, 2, 3, 4, 5]),
            Err(IdError::Bytes { got: 5, .. })
        ));
        assert!(matches!(
            SpanId::from_bytes(&[0; 8]),
            Err(IdError::Zero { .. })
        ));
    }
}
