//! infra-e2e
