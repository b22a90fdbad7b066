//! Protobuf contracts: the only thing that crosses process boundaries.
//!
//! - [`bus::v1`]: desired/observed state, events and heartbeats on NATS.
//! - [`operator::v1`]: the gRPC service each tier operator serves.
//! - [`coordinator::v1`]: the coordinator's gRPC API, driven with grpcurl.
//!
//! Convert to domain types at the edge; do not pass these deep into logic.

#![allow(clippy::doc_markdown, clippy::large_enum_variant)]

pub mod codec;

/// Bus messages (`infra.bus.v1`).
pub mod bus {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("infra.bus.v1");
    }
}

/// Operator gRPC service (`infra.operator.v1`).
pub mod operator {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("infra.operator.v1");
    }
}

/// Coordinator gRPC service (`infra.coordinator.v1`).
pub mod coordinator {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("infra.coordinator.v1");
    }
}

/// Encoded `FileDescriptorSet` of every `.proto` here (with imports), for
/// gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/infra_descriptor.bin"));

/// Converts a [`std::time::SystemTime`] into a protobuf timestamp.
pub fn timestamp(t: std::time::SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

/// The current time as a protobuf timestamp.
pub fn now() -> prost_types::Timestamp {
    timestamp(std::time::SystemTime::now())
}
