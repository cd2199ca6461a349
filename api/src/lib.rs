//! Wire types of the DMLS relay HTTP API, version 1 (`docs/API.md`).
//!
//! These are plain serde structs shared by the relay and the client. They do no I/O. Binary
//! fields use [`Bytes`], which travels as standard base64 with padding (RFC 4648 section 4).
//! With the `openapi` feature every type also derives a `utoipa` schema, from which the relay
//! generates `/openapi.json`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Fixed numbers of the protocol: caps that a request may not exceed and the defaults the relay
/// applies when a field is absent. Configurable size limits live in the relay's configuration.
pub mod limits {
    /// Most client ids in one `POST /v1/key-packages/claim`.
    pub const MAX_CLAIM_IDS: usize = 1_000;
    /// Most welcomes in one `POST /v1/welcomes`, counted by recipient (a `to_all` welcome counts
    /// each of its recipients).
    pub const MAX_WELCOMES_PER_POST: usize = 1_000;
    /// Most groups in one `POST /v1/sync`.
    pub const MAX_SYNC_GROUPS: usize = 10_000;
    /// Default and maximum `limit` of `GET .../messages` and `GET /v1/welcomes`.
    pub const PAGE_LIMIT_DEFAULT: u32 = 100;
    pub const PAGE_LIMIT_MAX: u32 = 1_000;
    /// Default and maximum total messages in one `sync` answer.
    pub const SYNC_LIMIT_DEFAULT: u32 = 500;
    pub const SYNC_LIMIT_MAX: u32 = 5_000;
    /// Longest long poll.
    pub const WAIT_MS_MAX: u64 = 30_000;
    /// Length bounds of an `Idempotency-Key` header value.
    pub const IDEMPOTENCY_KEY_MAX: usize = 64;
    /// Most members in a group's member list.
    pub const MAX_GROUP_MEMBERS: usize = 10_000;
}

/// JSON Schema patterns (ECMA-262) of the API's strings, as `/openapi.json` states them. Each
/// accepts exactly what the matching check accepts.
pub mod patterns {
    /// A client id ([`is_valid_client_id`](super::is_valid_client_id)).
    pub const CLIENT_ID: &str = "^[a-z0-9._-]{1,64}$";
    /// A group id ([`is_valid_group_id`](super::is_valid_group_id)).
    pub const GROUP_ID: &str = "^(?:[0-9a-f]{2}){1,64}$";
    /// An `Idempotency-Key` ([`is_valid_idempotency_key`](super::is_valid_idempotency_key)).
    pub const IDEMPOTENCY_KEY: &str = "^[!-~]{1,64}$";
    /// A bearer token issued by the relay: 32 bytes, base64url without padding.
    pub const TOKEN: &str = "^[A-Za-z0-9_-]{43}$";
    /// Non-empty [`Bytes`](super::Bytes): canonical standard base64 with padding (the unused
    /// bits of the last character are zero), what the decoder accepts.
    pub const BASE64: &str = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{4}|[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)$";
}

/// The name of the idempotency header of `POST .../messages`.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// Is `s` a valid client id: 1 to 64 characters of `a-z 0-9 . _ -`?
pub fn is_valid_client_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

/// Is `s` a valid group id: lowercase hex of 1 to 64 bytes?
pub fn is_valid_group_id(s: &str) -> bool {
    (2..=128).contains(&s.len())
        && s.len().is_multiple_of(2)
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Is `s` a valid `Idempotency-Key`: 1 to 64 visible ASCII characters?
pub fn is_valid_idempotency_key(s: &str) -> bool {
    (1..=limits::IDEMPOTENCY_KEY_MAX).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())
}

/// Opaque binary data, standard base64 with padding on the wire.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Bytes(pub Vec<u8>);

impl Bytes {
    pub fn into_inner(self) -> Vec<u8> {
        self.0
    }
}

impl std::fmt::Debug for Bytes {
    // Payloads can be large; show their size, not their content.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Bytes({} bytes)", self.0.len())
    }
}

impl From<Vec<u8>> for Bytes {
    fn from(v: Vec<u8>) -> Self {
        Bytes(v)
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(s.as_bytes())
            .map(Bytes)
            .map_err(|e| serde::de::Error::custom(format!("invalid base64: {e}")))
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for Bytes {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .content_encoding("base64")
            .pattern(Some(patterns::BASE64))
            .min_length(Some(4))
            .description(Some(
                "Standard base64 with padding (RFC 4648 section 4), canonical (the unused bits of \
                 the last character are zero). Never empty: every binary field holds at least one byte.",
            ))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for Bytes {}

/// Schemas of the API's string formats that have no Rust type of their own, for the OpenAPI
/// document: fields of the wire types name them with `#[schema(value_type = ...)]`.
#[cfg(feature = "openapi")]
pub mod openapi {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

    use super::patterns;

    /// A client id: 1 to 64 characters of `a-z 0-9 . _ -`.
    pub struct ClientId;

    impl utoipa::PartialSchema for ClientId {
        fn schema() -> RefOr<Schema> {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(patterns::CLIENT_ID))
                .min_length(Some(1))
                .max_length(Some(64))
                .description(Some("A client id: 1 to 64 characters of `a-z 0-9 . _ -`"))
                .into()
        }
    }

    impl utoipa::ToSchema for ClientId {}

    /// A group id: lowercase hex of 1 to 64 bytes.
    pub struct GroupId;

    impl utoipa::PartialSchema for GroupId {
        fn schema() -> RefOr<Schema> {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(patterns::GROUP_ID))
                .min_length(Some(2))
                .max_length(Some(128))
                .description(Some(
                    "A group id: lowercase hex of 1 to 64 bytes (2 to 128 hex digits)",
                ))
                .into()
        }
    }

    impl utoipa::ToSchema for GroupId {}

    /// [`OutgoingWelcome`](super::OutgoingWelcome): `{"to", "data"}` or `{"to_all", "data"}`.
    impl utoipa::PartialSchema for super::OutgoingWelcome {
        fn schema() -> RefOr<Schema> {
            use utoipa::openapi::schema::{AdditionalProperties, ArrayBuilder, OneOfBuilder};
            let data = || <super::Bytes as utoipa::PartialSchema>::schema();
            let shape = |field: &str, recipients: RefOr<Schema>, what: &str| {
                ObjectBuilder::new()
                    .property(field, recipients)
                    .property("data", data())
                    .required(field)
                    .required("data")
                    .additional_properties(Some(AdditionalProperties::FreeForm(false)))
                    .description(Some(what))
            };
            let to_all = ArrayBuilder::new()
                .items(<ClientId as utoipa::PartialSchema>::schema())
                .min_items(Some(1))
                .max_items(Some(1000))
                .unique_items(true);
            OneOfBuilder::new()
                .item(shape(
                    "to",
                    <ClientId as utoipa::PartialSchema>::schema(),
                    "A welcome to one recipient",
                ))
                .item(shape(
                    "to_all",
                    to_all.into(),
                    "One welcome, stored once, to 1 to 1,000 distinct recipients; a request \
                     names at most 1,000 recipients in all",
                ))
                .description(Some(
                    "One welcome to deliver; `data` is at most the relay's welcome size \
                     (`--max-welcome-bytes`, 4 MiB by default; 413 beyond)",
                ))
                .into()
        }
    }

    impl utoipa::ToSchema for super::OutgoingWelcome {}
}

/// Integers of request bodies. JSON has a single number type and JSON Schema, hence
/// `/openapi.json`, counts `2.0` as the integer 2, so a whole number is accepted in either
/// spelling; a fraction, or a float spelling beyond 2^53 (where floats skip integers), is refused.
mod whole {
    use serde::Deserializer;
    use serde::de::{Error, Unexpected, Visitor};

    /// Largest integer that every float spelling gives exactly.
    const EXACT: f64 = 9_007_199_254_740_992.0;

    struct Whole;

    impl Visitor<'_> for Whole {
        type Value = u64;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a non-negative integer")
        }

        fn visit_u64<E: Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }

        fn visit_i64<E: Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
        }

        fn visit_f64<E: Error>(self, v: f64) -> Result<u64, E> {
            if v.fract() == 0.0 && (0.0..=EXACT).contains(&v) {
                // Whole and within 0..=2^53: the conversion is exact.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                Ok(v as u64)
            } else {
                Err(E::invalid_value(Unexpected::Float(v), &self))
            }
        }
    }

    struct OptWhole;

    impl<'de> Visitor<'de> for OptWhole {
        type Value = Option<u64>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a non-negative integer or null")
        }

        fn visit_none<E: Error>(self) -> Result<Option<u64>, E> {
            Ok(None)
        }

        fn visit_unit<E: Error>(self) -> Result<Option<u64>, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<u64>, D::Error> {
            d.deserialize_any(Whole).map(Some)
        }
    }

    pub(crate) fn u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        d.deserialize_any(Whole)
    }

    pub(crate) fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_option(OptWhole)
    }

    pub(crate) fn opt_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        match opt_u64(d)? {
            None => Ok(None),
            Some(v) => u32::try_from(v).map(Some).map_err(|_| {
                D::Error::invalid_value(Unexpected::Unsigned(v), &"an integer of at most 2^32 - 1")
            }),
        }
    }
}

macro_rules! wire {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident : $t:ty),* $(,)? }) => {
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        $(#[$m])*
        pub struct $name { $($(#[$fm])* pub $f: $t),* }
    };
}

// ---------------------------------------------------------------- clients

wire! {
    /// `POST /v1/clients`
    #[serde(deny_unknown_fields)]
    pub struct RegisterRequest {
        #[cfg_attr(feature = "openapi", schema(value_type = openapi::ClientId))]
        pub client_id: String,
    }
}

/// `201` answer of `POST /v1/clients`. The token is shown only here; it is redacted in `Debug`.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterResponse {
    #[cfg_attr(feature = "openapi", schema(value_type = openapi::ClientId))]
    pub client_id: String,
    /// Bearer token for every authenticated route: 32 random bytes, base64url without padding.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_-]{43}$"))]
    pub token: String,
}

impl std::fmt::Debug for RegisterResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterResponse")
            .field("client_id", &self.client_id)
            .field("token", &"<redacted>")
            .finish()
    }
}

wire! {
    /// `GET /v1/clients/me`
    pub struct ClientInfo {
        #[cfg_attr(feature = "openapi", schema(value_type = openapi::ClientId))]
        pub client_id: String,
        /// Milliseconds since the Unix epoch.
        pub created_at: i64,
        pub key_packages_available: u64,
        pub has_last_resort: bool,
        /// Most key packages the relay keeps in this client's stock (0 from a relay that does
        /// not say).
        #[serde(default)]
        pub max_key_packages: u64,
    }
}

// ---------------------------------------------------------------- key packages

wire! {
    /// `POST /v1/key-packages`
    #[serde(deny_unknown_fields)]
    pub struct UploadKeyPackagesRequest {
        /// Each at most the relay's key package size (`--max-key-package-bytes`, 64 KiB by
        /// default; 413 beyond). A stock over the per-client limit (`max_key_packages` of
        /// `GET /v1/clients/me`) is 409.
        #[serde(default)]
        pub key_packages: Vec<Bytes>,
        /// A non-null value replaces the previous last-resort key package. Size limit as for
        /// `key_packages`.
        #[serde(default)]
        pub last_resort: Option<Bytes>,
    }
}

wire! {
    /// `201` answer of `POST /v1/key-packages`.
    pub struct UploadKeyPackagesResponse { pub available: u64 }
}

wire! {
    /// `POST /v1/key-packages/claim`
    #[serde(deny_unknown_fields)]
    pub struct ClaimKeyPackagesRequest {
        /// At most 1,000 ids, none twice.
        #[cfg_attr(
            feature = "openapi",
            schema(value_type = BTreeSet<openapi::ClientId>, max_items = 1000)
        )]
        pub client_ids: Vec<String>,
    }
}

wire! {
    /// One claimed key package.
    pub struct ClaimedKeyPackage {
        #[cfg_attr(feature = "openapi", schema(value_type = openapi::ClientId))]
        pub client_id: String,
        pub key_package: Bytes,
        /// True when the stock was empty and this is the (kept) last-resort package.
        pub last_resort: bool,
    }
}

wire! {
    /// `200` answer of `POST /v1/key-packages/claim`.
    pub struct ClaimKeyPackagesResponse {
        pub key_packages: Vec<ClaimedKeyPackage>,
        /// Client ids that had neither stock nor a last-resort package.
        #[cfg_attr(feature = "openapi", schema(value_type = Vec<openapi::ClientId>))]
        pub missing: Vec<String>,
    }
}

// ---------------------------------------------------------------- welcomes

/// One welcome to deliver: to one recipient (`to`) or, stored once, to several (`to_all`);
/// exactly one of the two. Its OpenAPI schema ([`openapi`]) is a `oneOf` of the two shapes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutgoingWelcome {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// 1 to 1,000 distinct recipients of the same bytes (fan-out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_all: Option<Vec<String>>,
    /// At most the relay's welcome size (`--max-welcome-bytes`, 4 MiB by default; 413 beyond).
    pub data: Bytes,
}

impl OutgoingWelcome {
    /// A welcome to one recipient (`to`).
    pub fn to_one(to: impl Into<String>, data: impl Into<Bytes>) -> Self {
        OutgoingWelcome {
            to: Some(to.into()),
            to_all: None,
            data: data.into(),
        }
    }

    /// A welcome of the same bytes to several recipients (`to_all`).
    pub fn to_all(to_all: Vec<String>, data: impl Into<Bytes>) -> Self {
        OutgoingWelcome {
            to: None,
            to_all: Some(to_all),
            data: data.into(),
        }
    }

    /// How many inbox entries this welcome makes (0 for an invalid one naming no recipient).
    pub fn recipient_count(&self) -> usize {
        usize::from(self.to.is_some()) + self.to_all.as_ref().map_or(0, Vec::len)
    }
}

wire! {
    /// `POST /v1/welcomes`
    #[serde(deny_unknown_fields)]
    pub struct PostWelcomesRequest {
        /// At most 1,000 welcomes.
        #[cfg_attr(feature = "openapi", schema(max_items = 1000))]
        pub welcomes: Vec<OutgoingWelcome>,
    }
}

wire! {
    /// `201` answer of `POST /v1/welcomes`: the inbox ids, in request order.
    pub struct PostWelcomesResponse { pub ids: Vec<u64> }
}

wire! {
    /// A welcome in the caller's inbox.
    pub struct Welcome {
        pub id: u64,
        #[cfg_attr(feature = "openapi", schema(value_type = openapi::ClientId))]
        pub from: String,
        pub data: Bytes,
        pub received_at: i64,
    }
}

wire! {
    /// `GET /v1/welcomes`
    pub struct WelcomesPage {
        pub welcomes: Vec<Welcome>,
        /// Pass as `after` to read on: the last id returned, or the given `after` if none.
        #[cfg_attr(feature = "openapi", schema(format = "uint64", maximum = 18446744073709551615usize))]
        pub next_after: u64,
        pub more: bool,
    }
}

// ---------------------------------------------------------------- groups

wire! {
    /// `PUT /v1/groups/{owner}/{group_id}`
    #[serde(deny_unknown_fields)]
    pub struct PutGroupRequest {
        /// At most 10,000 client ids, none twice.
        #[cfg_attr(
            feature = "openapi",
            schema(value_type = BTreeSet<openapi::ClientId>, max_items = 10000)
        )]
        pub members: Vec<String>,
    }
}

wire! {
    /// `GET /v1/groups/{owner}/{group_id}`
    pub struct GroupInfo {
        #[cfg_attr(feature = "openapi", schema(value_type = openapi::GroupId))]
        pub group_id: String,
        #[cfg_attr(feature = "openapi", schema(value_type = openapi::ClientId))]
        pub owner: String,
        #[cfg_attr(feature = "openapi", schema(value_type = BTreeSet<openapi::ClientId>))]
        pub members: Vec<String>,
        pub last_seq: u64,
        pub created_at: i64,
    }
}

wire! {
    /// JSON form of `POST .../messages` (the body may also be raw `application/octet-stream`).
    #[serde(deny_unknown_fields)]
    pub struct PostMessageRequest {
        /// At most the relay's message size (`--max-message-bytes`, 1 MiB by default; 413
        /// beyond).
        pub data: Bytes,
    }
}

wire! {
    /// `201`/`200` answer of `POST .../messages`.
    pub struct PostMessageResponse { pub seq: u64 }
}

wire! {
    /// A stored group message.
    pub struct Message {
        pub seq: u64,
        #[cfg_attr(feature = "openapi", schema(value_type = openapi::ClientId))]
        pub sender: String,
        pub data: Bytes,
        pub received_at: i64,
    }
}

wire! {
    /// `GET .../messages`
    pub struct MessagesPage {
        pub messages: Vec<Message>,
        /// Pass as `after` to read on: the last seq returned, or the given `after` if none.
        #[cfg_attr(feature = "openapi", schema(format = "uint64", maximum = 18446744073709551615usize))]
        pub next_after: u64,
        pub more: bool,
    }
}

// ---------------------------------------------------------------- sync

wire! {
    /// A group to read in `sync`, with the caller's cursor.
    #[serde(deny_unknown_fields)]
    pub struct SyncGroupCursor {
        #[cfg_attr(feature = "openapi", schema(value_type = openapi::ClientId))]
        pub owner: String,
        #[cfg_attr(feature = "openapi", schema(value_type = openapi::GroupId))]
        pub group_id: String,
        #[serde(default, deserialize_with = "whole::u64")]
        #[cfg_attr(feature = "openapi", schema(format = "uint64", maximum = 18446744073709551615usize))]
        pub after: u64,
    }
}

wire! {
    /// `POST /v1/sync`
    #[serde(deny_unknown_fields)]
    pub struct SyncRequest {
        /// At most 10,000 groups.
        #[serde(default)]
        #[cfg_attr(feature = "openapi", schema(max_items = 10000))]
        pub groups: Vec<SyncGroupCursor>,
        /// Null or absent: the welcome inbox is not read.
        #[serde(default, deserialize_with = "whole::opt_u64")]
        #[cfg_attr(feature = "openapi", schema(format = "uint64", maximum = 18446744073709551615usize))]
        pub welcomes_after: Option<u64>,
        /// Total messages in the answer (default 500, at most 5,000).
        #[serde(default, deserialize_with = "whole::opt_u32")]
        #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 5000))]
        pub limit: Option<u32>,
        /// Long poll: hold the request up to this long while nothing is new (0 to 30,000).
        #[serde(default, deserialize_with = "whole::opt_u64")]
        #[cfg_attr(feature = "openapi", schema(maximum = 30000))]
        pub wait_ms: Option<u64>,
    }
}

wire! {
    /// New messages of one group in a `sync` answer.
    pub struct SyncGroupMessages {
        #[cfg_attr(feature = "openapi", schema(value_type = openapi::ClientId))]
        pub owner: String,
        #[cfg_attr(feature = "openapi", schema(value_type = openapi::GroupId))]
        pub group_id: String,
        pub messages: Vec<Message>,
        #[cfg_attr(feature = "openapi", schema(format = "uint64", maximum = 18446744073709551615usize))]
        pub next_after: u64,
        pub more: bool,
    }
}

wire! {
    /// A group named in `sync` that the caller may not read.
    pub struct GroupRef {
        #[cfg_attr(feature = "openapi", schema(value_type = openapi::ClientId))]
        pub owner: String,
        #[cfg_attr(feature = "openapi", schema(value_type = openapi::GroupId))]
        pub group_id: String,
    }
}

wire! {
    /// `200` answer of `POST /v1/sync`. Groups with nothing new are left out.
    pub struct SyncResponse {
        pub groups: Vec<SyncGroupMessages>,
        pub welcomes: Vec<Welcome>,
        /// Null when the inbox was not read; otherwise the cursor to pass next time.
        #[cfg_attr(feature = "openapi", schema(format = "uint64", maximum = 18446744073709551615usize))]
        pub welcomes_next_after: Option<u64>,
        pub forbidden: Vec<GroupRef>,
    }
}

// ---------------------------------------------------------------- stream

wire! {
    /// `POST /v1/stream`: the groups and inbox to push, from these cursors on.
    #[serde(deny_unknown_fields)]
    pub struct StreamRequest {
        /// At most 10,000 groups.
        #[serde(default)]
        #[cfg_attr(feature = "openapi", schema(max_items = 10000))]
        pub groups: Vec<SyncGroupCursor>,
        /// Null or absent: the welcome inbox is not pushed.
        #[serde(default, deserialize_with = "whole::opt_u64")]
        #[cfg_attr(feature = "openapi", schema(format = "uint64", maximum = 18446744073709551615usize))]
        pub welcomes_after: Option<u64>,
        /// Most group messages per `sync` event (default 500, at most 5,000).
        #[serde(default, deserialize_with = "whole::opt_u32")]
        #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 5000))]
        pub limit: Option<u32>,
    }
}

/// Event names of `POST /v1/stream` (the `event:` field of each server-sent event).
pub mod stream_events {
    /// News: `data` is a [`SyncResponse`](super::SyncResponse).
    pub const SYNC: &str = "sync";
    /// Sent once, when everything stored before the stream opened has been sent: the client is
    /// caught up. `data` is `{}`.
    pub const READY: &str = "ready";
    /// The last event: `data` is a [`StreamEnd`](super::StreamEnd).
    pub const END: &str = "end";
    /// The last event after a failure: `data` is a [`Problem`](super::Problem).
    pub const ERROR: &str = "error";
}

wire! {
    /// `data` of the `end` event: why the relay closes the stream.
    pub struct StreamEnd {
        /// `shutdown` (the relay process stops) or `replaced` (a newer stream or long poll of the
        /// same client went over its cap of waiting requests).
        pub reason: String,
    }
}

// ---------------------------------------------------------------- errors

wire! {
    /// RFC 9457 problem details, served as `application/problem+json`.
    pub struct Problem {
        #[serde(rename = "type")]
        pub kind: String,
        pub title: String,
        pub status: u16,
        pub detail: String,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bytes_round_trip_as_padded_standard_base64() {
        let b = Bytes(vec![0xfb, 0xff, 0x01]);
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(json, "\"+/8B\"");
        assert_eq!(serde_json::from_str::<Bytes>(&json).unwrap(), b);
        assert_eq!(serde_json::to_string(&Bytes(vec![1])).unwrap(), "\"AQ==\"");
    }

    #[test]
    fn bytes_reject_bad_base64() {
        assert!(serde_json::from_str::<Bytes>("\"not base64!\"").is_err());
        assert!(
            serde_json::from_str::<Bytes>("\"AQ\"").is_err(),
            "padding is required"
        );
    }

    #[test]
    fn client_ids_follow_the_api_alphabet() {
        assert!(is_valid_client_id("alice"));
        assert!(is_valid_client_id("a.b_c-9"));
        assert!(!is_valid_client_id(""));
        assert!(!is_valid_client_id("Alice"));
        assert!(!is_valid_client_id("a/b"));
        assert!(!is_valid_client_id(&"a".repeat(65)));
        assert!(is_valid_client_id(&"a".repeat(64)));
    }

    #[test]
    fn group_ids_are_lowercase_hex_of_1_to_64_bytes() {
        assert!(is_valid_group_id("ab"));
        assert!(is_valid_group_id(&"0f".repeat(64)));
        assert!(!is_valid_group_id(&"0f".repeat(65)));
        assert!(!is_valid_group_id("abc"));
        assert!(!is_valid_group_id("AB"));
        assert!(!is_valid_group_id(""));
        assert!(!is_valid_group_id("zz"));
    }

    #[test]
    fn outgoing_welcomes_name_to_or_to_all_and_old_ones_read_as_before() {
        let one = OutgoingWelcome::to_one("bob", vec![1]);
        assert_eq!(
            serde_json::to_string(&one).unwrap(),
            r#"{"to":"bob","data":"AQ=="}"#
        );
        let all = OutgoingWelcome::to_all(vec!["bob".into(), "carol".into()], vec![1]);
        assert_eq!(
            serde_json::to_string(&all).unwrap(),
            r#"{"to_all":["bob","carol"],"data":"AQ=="}"#
        );
        assert_eq!((one.recipient_count(), all.recipient_count()), (1, 2));
        let read: OutgoingWelcome = serde_json::from_str(r#"{"to":"bob","data":"AQ=="}"#).unwrap();
        assert_eq!(read, one);
        assert!(
            serde_json::from_str::<OutgoingWelcome>(r#"{"to":"bob","cc":1,"data":"AQ=="}"#)
                .is_err()
        );
    }

    #[test]
    fn request_integers_take_whole_float_spellings_and_nothing_else() {
        let sync: SyncRequest = serde_json::from_str(
            r#"{"groups": [{"owner": "a", "group_id": "ab", "after": 392.0}],
                "welcomes_after": 3.0, "limit": 1e2, "wait_ms": 0.0}"#,
        )
        .unwrap();
        assert_eq!(sync.groups[0].after, 392);
        assert_eq!(sync.welcomes_after, Some(3));
        assert_eq!(sync.limit, Some(100));
        assert_eq!(sync.wait_ms, Some(0));
        let plain: SyncRequest =
            serde_json::from_str(r#"{"welcomes_after": 18446744073709551615, "limit": null}"#)
                .unwrap();
        assert_eq!(plain.welcomes_after, Some(u64::MAX));
        assert_eq!(plain.limit, None);
        assert_eq!(plain.wait_ms, None);
        for bad in [
            r#"{"wait_ms": 1.5}"#,
            r#"{"wait_ms": -1}"#,
            r#"{"welcomes_after": 1e300}"#,
            r#"{"welcomes_after": 18446744073709551616}"#,
            r#"{"limit": 4294967296}"#,
            r#"{"limit": "5"}"#,
            r#"{"groups": [{"owner": "a", "group_id": "ab", "after": 9007199254740994.0}]}"#,
        ] {
            assert!(serde_json::from_str::<SyncRequest>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn register_response_debug_hides_the_token() {
        let r = RegisterResponse {
            client_id: "a".into(),
            token: "secret-token".into(),
        };
        assert!(!format!("{r:?}").contains("secret-token"));
    }
}
