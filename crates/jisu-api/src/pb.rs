//! Generated protobuf types and gRPC stubs for `jisucloud.v1`, plus the descriptor set.
#![allow(missing_docs, clippy::all, missing_debug_implementations)]

tonic::include_proto!("jisucloud.v1");

/// The encoded `FileDescriptorSet` of `proto/` (with comments), served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/jisucloud_descriptor.bin"));

/// Upper-case status strings of a user, as the API speaks them.
pub const USER_STATUSES: [&str; 3] = ["ACTIVE", "INACTIVE", "SUSPENDED"];
