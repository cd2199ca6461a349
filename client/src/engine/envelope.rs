//! The application payload envelope (PROTOCOL.md "Application payload").

use super::EngineError;
use super::codec::{Reader, put_opaque};
use super::ids::MessageId;

/// The only envelope version.
pub const ENVELOPE_VERSION: u8 = 1;
/// MIME type of chat text.
pub const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// Content types with this prefix are control messages of the protocol, never shown as
/// content; those a receiver does not know are dropped (docs/PROTOCOL.md "Application payload").
pub const CONTROL_CONTENT_TYPE_PREFIX: &str = "application/vnd.dmls.";

/// Whether `content_type` is a control message's ([`CONTROL_CONTENT_TYPE_PREFIX`]).
pub fn is_control(content_type: &str) -> bool {
    content_type
        .get(..CONTROL_CONTENT_TYPE_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(CONTROL_CONTENT_TYPE_PREFIX))
}

/// `struct { uint8 version = 1; uint64 sent_at_ms; opaque message_id<V>;
/// opaque content_type<V>; opaque body<V>; } DmlsEnvelope;`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmlsEnvelope {
    /// Sender's clock, milliseconds since the Unix epoch.
    pub sent_at_ms: u64,
    /// 16 random bytes.
    pub message_id: MessageId,
    /// MIME type of `body`.
    pub content_type: String,
    /// The content.
    pub body: Vec<u8>,
}

impl DmlsEnvelope {
    /// TLS-encodes the envelope (version 1).
    pub fn encode(&self) -> Result<Vec<u8>, EngineError> {
        let mut out = vec![ENVELOPE_VERSION];
        out.extend_from_slice(&self.sent_at_ms.to_be_bytes());
        put_opaque(&mut out, &self.message_id.0)?;
        put_opaque(&mut out, self.content_type.as_bytes())?;
        put_opaque(&mut out, &self.body)?;
        Ok(out)
    }

    /// Strictly decodes an envelope: version 1, 16-byte message id, UTF-8 content type,
    /// minimal lengths, no trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, EngineError> {
        let mut r = Reader::new(bytes, "DmlsEnvelope");
        let version = r.u8("version")?;
        if version != ENVELOPE_VERSION {
            return Err(EngineError::Malformed(format!(
                "DmlsEnvelope: unsupported version {version}"
            )));
        }
        let sent_at_ms = r.u64("sent_at_ms")?;
        let id = r.opaque("message_id")?;
        let message_id = MessageId(id.try_into().map_err(|_| {
            EngineError::Malformed(format!(
                "DmlsEnvelope: message_id must be 16 bytes, got {}",
                id.len()
            ))
        })?);
        let content_type = String::from_utf8(r.opaque("content_type")?.to_vec()).map_err(|_| {
            EngineError::Malformed("DmlsEnvelope: content_type is not UTF-8".into())
        })?;
        let body = r.opaque("body")?.to_vec();
        r.finish()?;
        Ok(DmlsEnvelope {
            sent_at_ms,
            message_id,
            content_type,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn sample() -> DmlsEnvelope {
        DmlsEnvelope {
            sent_at_ms: 1_700_000_000_000,
            message_id: MessageId([3; 16]),
            content_type: TEXT_PLAIN.into(),
            body: b"hi".to_vec(),
        }
    }

    #[test]
    fn envelope_layout_and_round_trip() {
        let b = sample().encode().unwrap();
        assert_eq!(b[0], 1);
        assert_eq!(&b[1..9], &1_700_000_000_000u64.to_be_bytes());
        assert_eq!(b[9], 16);
        assert_eq!(&b[10..26], &[3; 16]);
        assert_eq!(DmlsEnvelope::decode(&b).unwrap(), sample());
    }

    #[test]
    fn bad_envelopes_are_rejected() {
        let b = sample().encode().unwrap();
        let mut v2 = b.clone();
        v2[0] = 2;
        assert!(DmlsEnvelope::decode(&v2).is_err());
        let mut trailing = b.clone();
        trailing.push(0);
        assert!(DmlsEnvelope::decode(&trailing).is_err());
        let mut short_id = b.clone();
        short_id[9] = 15;
        assert!(DmlsEnvelope::decode(&short_id).is_err());
        assert!(DmlsEnvelope::decode(&b[..b.len() - 1]).is_err());
    }
}
