//! The platform's Compose model.
//!
//! Parses the catalog of Compose files (`compose/NN-tier/stack/docker-compose.yml`)
//! with our own types, because off-the-shelf Compose types reject keys we
//! act on (`deploy.rollback_config`, `gpus`, `configs`). It interpolates
//! variables (strictly: an unset variable without a default is an error),
//! resolves relative paths, follows `include`, merges override files, and
//! yields plain domain types plus the cross-tier dependency graph.
//!
//! Nothing here touches Docker or the network, so operators, the
//! coordinator and tools can all load the same catalog and agree on it.
//!
//! ```no_run
//! use infra_compose::{load_catalog, LoadOptions, Selection};
//! let cat = load_catalog("compose".as_ref(), &LoadOptions::default())?;
//! let names = cat.select(&Selection::all())?;
//! let graph = cat.graph(&names)?;
//! for layer in graph.levels() {
//!     println!("{}", layer.join(" "));
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod checks;
mod convert;
mod envfile;
mod error;
mod graph;
mod include;
mod interp;
mod keypath;
mod lint;
mod load;
mod model;
mod paths;
mod select;
mod tier;
mod units;
mod values;

pub use error::{GraphError, LoadError, LoadErrorKind, SelectError};
pub use graph::Graph;
pub use lint::{Finding, ParseSeverityError, Rule, Severity, lint};
pub use load::{
    COMPOSE_FILE_NAMES, Catalog, Include, LoadOptions, MAX_FILE_BYTES, MAX_SECRET_BYTES, load_catalog, load_files,
};
pub use model::*;
pub use select::Selection;
pub use tier::{ParseTierError, Tier};
pub use units::{UnitError, parse_duration, parse_size};

#[cfg(test)]
mod include_tests;
#[cfg(test)]
mod tests;
