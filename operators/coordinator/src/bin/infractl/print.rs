//! How `infractl` prints what the coordinator answers: tables of
//! services, hosts and plans.

use infra_proto::bus::v1::Health;
use infra_proto::coordinator::v1 as api;

pub(crate) fn health(h: i32) -> String {
    Health::try_from(h).map_or("?".into(), |h| {
        h.as_str_name().trim_start_matches("HEALTH_").to_lowercase()
    })
}

pub(crate) fn age(t: Option<prost_types::Timestamp>) -> String {
    let Some(t) = t else { return "-".into() };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let s = (now - t.seconds).max(0);
    if s < 120 {
        format!("{s}s")
    } else if s < 7200 {
        format!("{}m", s / 60)
    } else {
        format!("{}h", s / 3600)
    }
}

pub(crate) fn table(rows: Vec<Vec<String>>) {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", line.join("  ").trim_end());
    }
}

/// Prints the status table; true when every service is up.
pub(crate) fn print_status(r: api::GetStatusResponse) -> bool {
    let mut rows = vec![
        [
            "SERVICE",
            "TIER",
            "HOST",
            "REPLICAS",
            "HEALTH",
            "SINCE",
            "CONTAINERS",
            "MESSAGE",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let mut all_ok = true;
    for s in r.services {
        let h = if s.pending_replicas > 0 && s.host.is_empty() {
            "pending".to_string()
        } else {
            health(s.health)
        };
        all_ok &= matches!(h.as_str(), "healthy" | "running" | "completed");
        rows.push(vec![
            s.service,
            s.tier,
            if s.host.is_empty() { "-".into() } else { s.host },
            format!("{}/{}", s.healthy_replicas, s.desired_replicas),
            h,
            age(s.since),
            s.container_ids.join(","),
            s.message,
        ]);
    }
    table(rows);
    all_ok
}

/// Prints the hosts table.
pub(crate) fn print_hosts(r: api::ListHostsResponse) {
    let mut rows = vec![
        [
            "HOST",
            "STATE",
            "TIER",
            "VERSION",
            "SERVICES",
            "LAST HEARTBEAT",
            "GRPC",
            "METRICS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let mut skewed = Vec::new();
    for h in r.hosts {
        if h.operators.is_empty() {
            rows.push(vec![h.host.clone(), h.state.clone(), "-".into()]);
        }
        for o in h.operators {
            if !o.version_skew.is_empty() {
                skewed.push(format!("{} {}: {}", h.host, o.tier, o.version_skew));
            }
            rows.push(vec![
                h.host.clone(),
                h.state.clone(),
                o.tier,
                if o.version_skew.is_empty() {
                    o.version
                } else {
                    format!("{} (!)", o.version)
                },
                o.services.to_string(),
                format!("{} ago", age(o.last_heartbeat)),
                o.grpc_addr,
                if o.metrics_addr.is_empty() {
                    "-".into()
                } else {
                    o.metrics_addr
                },
            ]);
        }
    }
    table(rows);
    if !skewed.is_empty() {
        println!(
            "\nversion skew with coordinator {} (finish the upgrade): {}",
            r.coordinator_version,
            skewed.join("; ")
        );
    }
}

/// Prints the plan table and its warnings.
pub(crate) fn print_plan(r: api::PlanResponse) {
    let mut rows = vec![
        [
            "LEVEL",
            "SERVICE",
            "TIER",
            "HOST",
            "ACTION",
            "IMAGE",
            "WAITS FOR",
            "NOT ACTED ON",
        ]
        .map(String::from)
        .to_vec(),
    ];
    // Each change as `field: old → new`, listed under the table.
    let mut details = Vec::new();
    for s in r.steps {
        let action = api::Action::try_from(s.action).map_or("?".into(), |a| {
            a.as_str_name().trim_start_matches("ACTION_").to_lowercase()
        });
        let action = if s.changes.is_empty() {
            action
        } else {
            let fields: Vec<&str> = s.changes.iter().map(|c| c.split(':').next().unwrap_or(c)).collect();
            details.extend(
                s.changes
                    .iter()
                    .filter(|c| c.contains(':'))
                    .map(|c| format!("  {}: {c}", s.service)),
            );
            format!("{action} ({})", fields.join(","))
        };
        rows.push(vec![
            s.level.to_string(),
            s.service,
            s.tier,
            s.host,
            action,
            s.image,
            s.waits_for.join(", "),
            s.unsupported_keys.join(", "),
        ]);
    }
    table(rows);
    if !details.is_empty() {
        println!("changes:");
        for d in details {
            println!("{d}");
        }
    }
    for w in r.warnings {
        println!("warning: {w}");
    }
}
