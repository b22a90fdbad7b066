//! infra-coordinator
