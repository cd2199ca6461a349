//! The engine's error type.

/// Everything that can go wrong in the engine. Any error leaves the state unchanged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The SQLite database failed.
    #[error("state database error: {0}")]
    Database(#[from] rusqlite::Error),
    /// A schema migration (openmls's or the engine's) failed, or the database cannot be read by
    /// this version.
    #[error("could not migrate the state database schema: {0}")]
    Migration(String),
    /// No identity yet.
    #[error("no identity: create one first")]
    NoIdentity,
    /// An identity exists already.
    #[error("an identity exists already (client id {0})")]
    IdentityExists(String),
    /// Unknown DGroup.
    #[error("unknown DGroup {0}")]
    UnknownDGroup(String),
    /// A message for a group we do not follow.
    #[error("message for unknown Send Group {owner}/{group_id}")]
    UnknownSendGroup {
        /// Owner given by the relay.
        owner: String,
        /// Group id given by the relay.
        group_id: String,
    },
    /// Bytes that are not what they claim to be.
    #[error("malformed input: {0}")]
    Malformed(String),
    /// A message that breaks a rule of PROTOCOL.md.
    #[error("rejected: {0}")]
    Rejected(String),
    /// Our Send Group is not usable yet (its members are not added yet) or any more.
    #[error("our Send Group is not ready: {0}")]
    NotReady(String),
    /// A user argument is wrong.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// openmls refused an operation.
    #[error("MLS error: {0}")]
    Mls(String),
    /// The state database holds a value this version cannot read (written by a later
    /// version, or damaged).
    #[error("the state database holds a value this version cannot read: {0}")]
    UnreadableState(String),
    /// The state database was written by a later version of the engine.
    #[error(
        "the state database has engine schema version {found}, this version reads up to \
         {supported}: open it with a newer version"
    )]
    SchemaTooNew {
        /// Version found in the database.
        found: u32,
        /// Latest version this code reads.
        supported: u32,
    },
    /// A bug: an internal invariant does not hold.
    #[error("internal error (please report): {0}")]
    Internal(String),
}

impl EngineError {
    /// Whether the error is about the input itself (a message or Welcome that is malformed,
    /// breaks a rule, or is for a group we do not follow), so that skipping it is right,
    /// rather than about our storage or a bug.
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            EngineError::Malformed(_)
                | EngineError::Rejected(_)
                | EngineError::Mls(_)
                | EngineError::UnknownSendGroup { .. }
        )
    }

    /// Wraps an openmls error (their Display texts carry no secrets).
    pub(crate) fn mls(context: &str, err: impl std::fmt::Display) -> Self {
        EngineError::Mls(format!("{context}: {err}"))
    }
}
