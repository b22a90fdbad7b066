//! infra-compose
