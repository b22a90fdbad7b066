//! What the tests of every crate share, so that no test writes its own:
//!
//! - [`eventually`]: wait for a condition with a deadline (sync and async),
//!   and [`assert_eventually!`];
//! - [`events::record_events`]: every event on the bus, with when it came;
//! - [`fake_http`]: a fake HTTP/1.1 server answering from a handler and
//!   recording the requests;
//! - [`load::Load`]: a background client doing numbered operations, with
//!   what it acknowledged, what failed and the longest gap.
//!
//! No sleep here stands for synchronisation: every wait is for a condition,
//! bounded.

pub mod events;
pub mod eventually;
pub mod fake_http;
pub mod load;

pub use eventually::{eventually, wait_for};
