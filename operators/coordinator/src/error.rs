//! The coordinator's errors: a message for people and a small kind to
//! branch on (nats.rs's `Error<Kind>` style). The logic returns them; the
//! gRPC face (`service.rs`) maps each kind to a status code, and nothing
//! below it knows about gRPC.

use std::fmt;

/// What kind of failure, for callers that branch (and for the status code).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request or the catalog is wrong; the message names what and
    /// where (file, line, service, field).
    Invalid,
    /// The request is well formed but the platform's state refuses it now
    /// (not deployed, stateful, no room, a rollout in progress).
    Precondition,
    /// A thing asked about does not exist.
    NotFound,
    /// The bus or another dependency cannot be reached now: retrying may
    /// pass.
    Unavailable,
    /// A bug or an impossible state.
    Internal,
}

/// An error of the coordinator's logic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

/// The coordinator's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl fmt::Display) -> Self {
        Self {
            kind,
            message: message.to_string(),
        }
    }

    /// [`ErrorKind::Invalid`].
    pub fn invalid(message: impl fmt::Display) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }

    /// [`ErrorKind::Precondition`].
    pub fn precondition(message: impl fmt::Display) -> Self {
        Self::new(ErrorKind::Precondition, message)
    }

    /// [`ErrorKind::NotFound`].
    pub fn not_found(message: impl fmt::Display) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// [`ErrorKind::Unavailable`].
    pub fn unavailable(message: impl fmt::Display) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    /// [`ErrorKind::Internal`].
    pub fn internal(message: impl fmt::Display) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, for people.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<infra_bus::BusError> for Error {
    /// A bad name is the caller's; anything else the bus did not do.
    fn from(e: infra_bus::BusError) -> Self {
        match e.kind() {
            infra_bus::BusErrorKind::InvalidName => Self::invalid(e),
            _ => Self::unavailable(e),
        }
    }
}
