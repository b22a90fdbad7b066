//! The ai tier: the host's GPUs (NVML) as facts, models for Ollama.

use operator_core::Extension;

/// This tier's extensions.
pub const EXTENSIONS: &[Extension] = &[];
