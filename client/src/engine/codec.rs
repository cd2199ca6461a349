//! Strict TLS presentation-language codec helpers (RFC 9420 section 2.1.2 variable-length
//! vectors): minimal length encodings only, no trailing bytes.

use super::EngineError;

/// Largest length a variable-length vector may have (2^30 - 1).
const MAX_VARINT: usize = (1 << 30) - 1;

/// Appends the RFC 9420 variable-length integer `len` (minimal encoding).
pub(crate) fn put_varint(out: &mut Vec<u8>, len: usize) -> Result<(), EngineError> {
    if len < 1 << 6 {
        out.push(len as u8);
    } else if len < 1 << 14 {
        out.extend_from_slice(&((len as u16) | 0x4000).to_be_bytes());
    } else if len <= MAX_VARINT {
        out.extend_from_slice(&((len as u32) | 0x8000_0000).to_be_bytes());
    } else {
        return Err(EngineError::InvalidArgument(format!(
            "vector of {len} bytes is too long to encode"
        )));
    }
    Ok(())
}

/// Appends `opaque data<V>`.
pub(crate) fn put_opaque(out: &mut Vec<u8>, data: &[u8]) -> Result<(), EngineError> {
    put_varint(out, data.len())?;
    out.extend_from_slice(data);
    Ok(())
}

/// A cursor over bytes being decoded; every read checks bounds and minimal lengths.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// Starts decoding `buf`; `what` names the structure in error messages.
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }

    fn err(&self, msg: impl std::fmt::Display) -> EngineError {
        EngineError::Malformed(format!("{}: {msg}", self.what))
    }

    /// Reads `n` raw bytes.
    pub(crate) fn bytes(&mut self, n: usize, field: &str) -> Result<&'a [u8], EngineError> {
        if self.buf.len() < n {
            return Err(self.err(format_args!("truncated in {field}")));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Reads a `uint8`.
    pub(crate) fn u8(&mut self, field: &str) -> Result<u8, EngineError> {
        Ok(self.bytes(1, field)?[0])
    }

    /// Reads a `uint16`.
    pub(crate) fn u16(&mut self, field: &str) -> Result<u16, EngineError> {
        let b = self.bytes(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// Reads a `uint64`.
    pub(crate) fn u64(&mut self, field: &str) -> Result<u64, EngineError> {
        let b = self.bytes(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// Reads a variable-length integer, rejecting non-minimal encodings.
    pub(crate) fn varint(&mut self, field: &str) -> Result<usize, EngineError> {
        let first = self.u8(field)?;
        let (len, min) = match first >> 6 {
            0 => return Ok(usize::from(first & 0x3f)),
            1 => {
                let b = self.u8(field)?;
                (usize::from(first & 0x3f) << 8 | usize::from(b), 1 << 6)
            }
            2 => {
                let b = self.bytes(3, field)?;
                (
                    usize::from(first & 0x3f) << 24
                        | usize::from(b[0]) << 16
                        | usize::from(b[1]) << 8
                        | usize::from(b[2]),
                    1 << 14,
                )
            }
            _ => return Err(self.err(format_args!("invalid length prefix in {field}"))),
        };
        if len < min {
            return Err(self.err(format_args!("non-minimal length encoding in {field}")));
        }
        Ok(len)
    }

    /// Reads `opaque data<V>`.
    pub(crate) fn opaque(&mut self, field: &str) -> Result<&'a [u8], EngineError> {
        let len = self.varint(field)?;
        self.bytes(len, field)
    }

    /// Whether everything was read.
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Fails unless everything was read.
    pub(crate) fn finish(self) -> Result<(), EngineError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.err(format_args!("{} trailing bytes", self.buf.len())))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn varint_round_trips_at_boundaries() {
        for len in [0usize, 63, 64, 16383, 16384, MAX_VARINT] {
            let mut out = Vec::new();
            put_varint(&mut out, len).unwrap();
            let mut r = Reader::new(&out, "test");
            assert_eq!(r.varint("len").unwrap(), len);
            r.finish().unwrap();
        }
    }

    #[test]
    fn non_minimal_varint_is_rejected() {
        // 5 encoded in two bytes.
        let mut r = Reader::new(&[0x40, 0x05], "test");
        assert!(r.varint("len").is_err());
        // 100 encoded in four bytes.
        let mut r = Reader::new(&[0x80, 0x00, 0x00, 100], "test");
        assert!(r.varint("len").is_err());
        // 0b11 prefix is invalid.
        let mut r = Reader::new(&[0xc0, 0, 0, 0, 0, 0, 0, 1], "test");
        assert!(r.varint("len").is_err());
    }
}
