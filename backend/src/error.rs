//! Typed errors of the plugin: every failure carries an [`ErrorCode`] (a number that crosses the C
//! ABI and the cxx bridge unchanged) and a message (for the log). The C++ half maps the code to an
//! `executorch::runtime::Error` in one place (`to_et_error` in cpp/backend.cpp); nothing parses the
//! message.

use mobilemoe_ops::OpsError;
use mobilemoe_schema::BlobError;

/// What went wrong, as the C ABI's return code (0 = ok). 1 and 2 keep the meaning they had when
/// the C ABI returned only "error" (1) and "panic" (2).
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A bad input of one call (shape, length, attribute, position, token id): `InvalidArgument`.
    InvalidArgument = 1,
    /// A bug: a caught panic or a broken internal invariant. `Internal`.
    Internal = 2,
    /// The delegate blob is malformed: `InvalidProgram`.
    InvalidProgram = 3,
    /// Well-formed but not handled by this build (a newer blob format version, an input dtype the
    /// delegate does not take): `NotSupported`.
    NotSupported = 4,
    /// An allocation failed (or its size does not fit the address space): `MemoryAllocationFailed`.
    OutOfMemory = 5,
}

impl ErrorCode {
    /// Every code, in numeric order.
    pub const ALL: [ErrorCode; 5] =
        [ErrorCode::InvalidArgument, ErrorCode::Internal, ErrorCode::InvalidProgram, ErrorCode::NotSupported, ErrorCode::OutOfMemory];

    /// The number carried across the ABI.
    pub fn as_i32(self) -> i32 {
        self as i32
    }

    /// The code of a number from the ABI (`None` for 0 = ok and unknown numbers).
    pub fn from_i32(v: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_i32() == v)
    }
}

/// A failure: code + message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }
    pub fn invalid_program(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidProgram, message)
    }
    pub fn not_supported(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotSupported, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
    /// The same code with `prefix: ` before the message (where it happened).
    pub fn context(self, prefix: impl std::fmt::Display) -> Self {
        Self { code: self.code, message: format!("{prefix}: {}", self.message) }
    }
    /// A caught panic (always `Internal`).
    pub fn from_panic(what: &str, p: &(dyn std::any::Any + Send)) -> Self {
        Self::internal(format!("internal error (panic) in {what}: {}", panic_message(p)))
    }
    /// Whether the message mentions `s` (tests compare messages).
    pub fn contains(&self, s: &str) -> bool {
        self.message.contains(s)
    }
}

/// The message of a caught panic (`panic!` with a literal or a formatted string), for the
/// boundaries that turn panics into errors (the C ABI, the cxx bridge, the Android JNI layer).
pub fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Ops errors at run time: a bad argument of the call, unless an allocation failed or a worker
/// thread panicked.
impl From<OpsError> for Error {
    fn from(e: OpsError) -> Self {
        let code = match e {
            OpsError::OutOfMemory { .. } => ErrorCode::OutOfMemory,
            OpsError::Panicked(_) | OpsError::Internal(_) => ErrorCode::Internal,
            _ => ErrorCode::InvalidArgument,
        };
        Self::new(code, e.to_string())
    }
}

/// A rejected blob: malformed (`InvalidProgram`), except a format version this build does not
/// read (`NotSupported`: re-export, or update the plugin).
impl From<BlobError> for Error {
    fn from(e: BlobError) -> Self {
        let code = if matches!(e, BlobError::BadVersion { .. }) { ErrorCode::NotSupported } else { ErrorCode::InvalidProgram };
        Self::new(code, e.to_string())
    }
}

/// Plain-text errors of argument checks (`Err("...")?` in the C ABI): `InvalidArgument`.
impl From<String> for Error {
    fn from(message: String) -> Self {
        Self::invalid_argument(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Self::invalid_argument(message)
    }
}

/// Runs `f`, turning a panic into an `Internal` error (no unwinding across an FFI boundary).
/// `what` names the boundary (the C ABI function or bridge call).
pub fn catch<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        #[cfg(feature = "fault-injection")]
        fault::maybe_panic(what);
        f()
    }))
    .unwrap_or_else(|p| Err(Error::from_panic(what, p.as_ref())))
}

/// Fault injection for the robustness tests (feature `fault-injection`, never in a release of
/// the plugin): makes the next guarded call named `what` on this thread panic inside its guard,
/// as a bug there would, so the whole path of a panic (guard, code, C++ mapping, ExecuTorch) is
/// tested without a real bug.
#[cfg(feature = "fault-injection")]
pub mod fault {
    use std::cell::RefCell;

    thread_local! {
        static NEXT: RefCell<Option<String>> = const { RefCell::new(None) };
    }

    /// The next `catch(what, ..)` on this thread panics.
    pub fn panic_next(what: &str) {
        NEXT.with(|n| *n.borrow_mut() = Some(what.to_string()));
    }

    pub(crate) fn maybe_panic(what: &str) {
        if NEXT.with(|n| n.borrow().as_deref() == Some(what)) {
            NEXT.with(|n| n.borrow_mut().take());
            panic!("injected fault in {what}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_i32(c.as_i32()), Some(c));
            assert_ne!(c.as_i32(), 0);
        }
        assert_eq!(ErrorCode::from_i32(0), None);
        assert_eq!(ErrorCode::from_i32(6), None);
    }

    #[test]
    fn a_panic_is_internal() {
        let e = catch::<()>("test", || panic!("boom {}", 7)).unwrap_err();
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(e.contains("boom 7") && e.contains("in test"), "{e}");
        let e = catch::<()>("test", || std::panic::panic_any(3u8)).unwrap_err();
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(e.contains("unknown panic"), "{e}");
    }

    /// The C++ header's `MobileMoeErrorCode` enum (what backend.cpp maps) has the Rust numbers.
    #[test]
    fn cpp_header_has_the_same_codes() {
        let header = include_str!("../cpp/mobilemoe.h");
        let names = [
            (ErrorCode::InvalidArgument, "MOBILEMOE_INVALID_ARGUMENT"),
            (ErrorCode::Internal, "MOBILEMOE_INTERNAL"),
            (ErrorCode::InvalidProgram, "MOBILEMOE_INVALID_PROGRAM"),
            (ErrorCode::NotSupported, "MOBILEMOE_NOT_SUPPORTED"),
            (ErrorCode::OutOfMemory, "MOBILEMOE_OUT_OF_MEMORY"),
        ];
        for (code, name) in names {
            let line =
                header.lines().find(|l| l.trim_start().starts_with(&format!("{name} ="))).unwrap_or_else(|| panic!("{name} missing"));
            let v: i32 = line.split('=').nth(1).unwrap().trim().trim_end_matches(',').parse().unwrap();
            assert_eq!(v, code.as_i32(), "{name}");
        }
        assert!(header.contains("MOBILEMOE_OK = 0,"));
    }

    #[test]
    fn conversions_pick_the_code() {
        assert_eq!(Error::from(BlobError::BadVersion { found: 99 }).code, ErrorCode::NotSupported);
        assert_eq!(Error::from(BlobError::TooSmall(3)).code, ErrorCode::InvalidProgram);
        assert_eq!(Error::from(BlobError::Invalid("x".into())).code, ErrorCode::InvalidProgram);
        assert_eq!(Error::from(OpsError::ZeroDim { what: "x" }).code, ErrorCode::InvalidArgument);
        assert_eq!(Error::from(OpsError::OutOfMemory { what: "kv cache", bytes: 1 << 40 }).code, ErrorCode::OutOfMemory);
        assert_eq!(Error::from(OpsError::Panicked("kernel")).code, ErrorCode::Internal);
        assert_eq!(Error::from(OpsError::Internal("kernel contract check failed")).code, ErrorCode::Internal);
        let e = Error::invalid_program("bad").context("node 3");
        assert_eq!((e.code, e.message.as_str()), (ErrorCode::InvalidProgram, "node 3: bad"));
    }
}
