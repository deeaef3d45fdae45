//! The MobileMoE delegate blob (format version 5; versions 1-4 are still read): a 32-byte header, a `Graph` flatbuffer
//! (`schema/mobilemoe.fbs`) and a 64-byte aligned data area of weight segments.
//!
//! * [`read::parse`] checks everything (header, flatbuffer verifier, every tensor id, segment
//!   ranges and alignment, dtype/shape against byte sizes and the ops crate's [`MatrixSpec`],
//!   attributes, data flow) and returns a decoded, owned [`read::Graph`] whose constants are
//!   byte ranges into the blob (zero copy).
//! * [`write`] serialises a [`write::RawGraph`] as is (valid or deliberately broken, for tests and
//!   fuzzers) and offers a [`write::BlobBuilder`] that produces valid blobs.
//!
//! The generated flatbuffers code (`src/generated/mobilemoe_generated.rs`) is checked in; it is
//! produced by the flatc 24.3.25 shipped in the executorch wheel (`tests/regen.rs` checks that).
//!
//! [`MatrixSpec`]: mobilemoe_ops::MatrixSpec

#[allow(warnings, clippy::all)]
#[rustfmt::skip]
#[path = "generated/mobilemoe_generated.rs"]
mod mobilemoe_generated;

/// The flatc-generated types (`mobilemoe.blob` namespace).
pub mod fb {
    pub use crate::mobilemoe_generated::mobilemoe::blob::*;
}

pub mod read;
pub mod write;

/// A subset of Perfetto's trace protobuf (`schema/proto/perfetto_trace.proto`, real Perfetto field
/// numbers), as prost types. The generated code is checked in (`src/generated/perfetto.protos.rs`,
/// made by `scripts/gen_perfetto_proto.sh`, so building needs no `protoc`); `tests/perfetto_proto.rs`
/// checks it was generated from the current .proto.
#[allow(clippy::all, missing_docs)]
#[rustfmt::skip]
pub mod perfetto {
    include!("generated/perfetto.protos.rs");
}

pub use read::{parse, Graph, Node, NodeOp, TensorDesc};
pub use write::{BlobBuilder, RawGraph};

/// `"MMOE"`.
pub const MAGIC: [u8; 4] = *b"MMOE";
/// The format version this library writes (it also reads [`MIN_FORMAT_VERSION`]..).
pub const FORMAT_VERSION: u32 = 5;
/// The oldest format version still read (version 1: MoeFfn and Int4Linear nodes only).
pub const MIN_FORMAT_VERSION: u32 = 1;
/// Header bytes; the flatbuffer starts right after it.
pub const HEADER_SIZE: usize = 32;
/// Alignment of the data area and of every segment offset.
pub const DATA_ALIGN: usize = 64;

/// Why a blob was rejected. Every message names the offending field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BlobError {
    #[error("blob too small: {0} bytes, the header alone is 32")]
    TooSmall(usize),
    #[error("bad magic {0:02x?}: not a MobileMoE delegate blob (expected \"MMOE\")")]
    BadMagic([u8; 4]),
    #[error("unsupported blob format version {found} (this library reads versions {MIN_FORMAT_VERSION}..={FORMAT_VERSION}); re-export the model with a matching mobilemoe_export")]
    BadVersion { found: u32 },
    #[error("bad header: {0}")]
    Header(String),
    #[error("flatbuffer verification failed: {0}")]
    Flatbuffer(String),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, BlobError>;

pub(crate) fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(BlobError::Invalid(msg.into()))
}

/// Size of one element of `dtype` in bytes (`None` for a value outside the enum).
pub fn dtype_size(dtype: fb::DType) -> Option<usize> {
    Some(match dtype {
        fb::DType::F32 | fb::DType::I32 => 4,
        fb::DType::U8 | fb::DType::I8 => 1,
        fb::DType::I64 => 8,
        fb::DType::F16 | fb::DType::BF16 => 2,
        _ => return None,
    })
}
