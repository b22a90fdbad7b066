//! The gateway tier: routes from the services' Traefik labels, rendered for
//! Traefik and Nginx.
//!
//! Services declare their routes where the seeds do, as Traefik labels
//! ([`labels`]). The gateway operator on each host collects the routes of
//! every running, healthy service on every host from the bus
//! ([`table`]), renders them ([`render`]) to
//! `<state_dir>/gateway/traefik/dynamic.yml` (Traefik's file provider) and
//! `<state_dir>/gateway/nginx/routes.conf`, and loads the latter into the
//! gateway's running Nginx after `nginx -t` accepts it ([`nginx`]). It
//! re-renders on every observed-state change (debounced) and every few
//! seconds, and reloads only when the output changed.

pub mod labels;
pub mod nginx;
pub mod render;
mod run;
pub mod table;

use operator_core::{Extension, TierContext};

pub use run::NGINX_SERVICE_ENV;

/// This tier's extensions: the route renderer.
pub const EXTENSIONS: &[Extension] = &[routes];

/// The route renderer (see the module documentation).
fn routes(ctx: TierContext) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(run::run(ctx))
}
