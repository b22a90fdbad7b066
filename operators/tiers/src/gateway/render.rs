//! The route table as files: Traefik dynamic configuration (file provider
//! YAML) and an Nginx include. Pure and deterministic: the same table
//! gives the same bytes, so the extension rewrites and reloads only when
//! something really changed.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use super::labels::{Backend, Route};
use super::table::{Problem, Table};

/// The first line of both files.
const HEADER: &str = "Rendered by the gateway operator from the services' Traefik labels; replaced on every change.";

/// Traefik file-provider YAML for `table`: one router per route, one
/// service per upstream, and a `forwardAuth` middleware per forward-auth
/// definition (its address pointing at a healthy replica, else as
/// written, so a protected route fails closed rather than opens).
pub fn traefik(table: &Table) -> String {
    let mut routers = Map::new();
    let mut services = Map::new();
    let mut middlewares = Map::new();
    for r in table.routes.values() {
        let service = match &r.backend {
            Backend::Internal(s) => s.clone(),
            Backend::Port { .. } => Table::upstream_of(r).unwrap_or_default(),
        };
        let mut router = Map::new();
        router.insert("rule".into(), json!(r.rule.to_traefik()));
        router.insert("service".into(), json!(service));
        if !r.entrypoints.is_empty() {
            router.insert("entryPoints".into(), json!(r.entrypoints));
        }
        if r.tls {
            router.insert("tls".into(), json!({}));
        }
        let protection = table.protection(r);
        let mws: Vec<String> = r
            .middlewares
            .iter()
            .map(|m| {
                let base = m.split('@').next().unwrap_or(m);
                if Some(base) == protection {
                    base.to_owned() // defined in this file
                } else {
                    m.clone()
                }
            })
            .collect();
        if !mws.is_empty() {
            router.insert("middlewares".into(), json!(mws));
        }
        routers.insert(r.router.clone(), Value::Object(router));
    }
    for (name, servers) in &table.upstreams {
        let urls: Vec<Value> = servers
            .iter()
            .map(|s| json!({ "url": format!("http://{}:{}", s.host, s.port) }))
            .collect();
        services.insert(name.clone(), json!({ "loadBalancer": { "servers": urls } }));
    }
    let protected: std::collections::BTreeSet<&str> =
        table.routes.values().filter_map(|r| table.protection(r)).collect();
    for name in protected {
        let (address, trust, headers) = match table.auth.get(name) {
            Some((f, up)) => {
                let address = up
                    .as_ref()
                    .and_then(|u| table.upstreams.get(u))
                    .and_then(|s| s.first())
                    .map_or_else(
                        || f.address.clone(),
                        |s| {
                            let path = f
                                .address
                                .strip_prefix("http://")
                                .and_then(|r| r.find('/').map(|i| &r[i..]))
                                .unwrap_or("/");
                            format!("http://{}:{}{path}", s.host, s.port)
                        },
                    );
                (address, f.trust_forward_header, f.response_headers.clone())
            }
            None => ("http://oauth2-proxy:4180/".to_owned(), true, Vec::new()),
        };
        let mut fa = Map::new();
        fa.insert("address".into(), json!(address));
        fa.insert("trustForwardHeader".into(), json!(trust));
        if !headers.is_empty() {
            fa.insert("authResponseHeaders".into(), json!(headers));
        }
        middlewares.insert(name.to_owned(), json!({ "forwardAuth": fa }));
    }
    let mut http = Map::new();
    for (k, v) in [
        ("routers", routers),
        ("services", services),
        ("middlewares", middlewares),
    ] {
        if !v.is_empty() {
            http.insert(k.into(), Value::Object(v));
        }
    }
    let doc = if http.is_empty() {
        json!({})
    } else {
        json!({ "http": http })
    };
    let body = serde_norway::to_string(&doc).unwrap_or_default();
    format!("# {HEADER}\n{body}")
}

/// Nginx configuration for `table` (an `http`-context include): one
/// `upstream` per service with a `server` per healthy replica, one
/// `server` block per host name with a `location` per path prefix, and
/// for protected routes an `auth_request` to the forward-auth service
/// (OAuth2 Proxy's `/oauth2/auth`), signing in through `/oauth2/start`.
///
/// Routes Nginx cannot serve are left out and returned as problems: a
/// rule without `Host(..)` (the static default server owns those), a
/// middleware other than forward-auth (silently dropping it could open
/// what it guards), a Traefik-internal service, a host and prefix already
/// taken.
pub fn nginx(table: &Table, listen: u16) -> (String, Vec<Problem>) {
    let mut problems = Vec::new();
    // host -> prefix ("" = all) -> route
    let mut hosts: BTreeMap<&str, BTreeMap<&str, &Route>> = BTreeMap::new();
    for r in table.routes.values() {
        let problem = |what: String| Problem {
            service: r.service.clone(),
            key: format!(
                "traefik.http.routers.{}.{}",
                r.router,
                if what.contains("middleware") {
                    "middlewares"
                } else {
                    "rule"
                }
            ),
            problem: what,
        };
        if let Backend::Internal(_) = r.backend {
            continue; // Traefik's own (dashboard): nothing for Nginx
        }
        if r.rule.hosts.is_empty() {
            problems.push(problem("a rule without Host(..) is not rendered for Nginx".into()));
            continue;
        }
        let protection = table.protection(r);
        if let Some(m) = r
            .middlewares
            .iter()
            .find(|m| Some(m.split('@').next().unwrap_or(m)) != protection)
        {
            problems.push(problem(format!(
                "middleware {m} has no Nginx rendering (only forward-auth ones do): the route is not served"
            )));
            continue;
        }
        let prefixes: Vec<&str> = if r.rule.path_prefixes.is_empty() {
            vec![""]
        } else {
            r.rule.path_prefixes.iter().map(String::as_str).collect()
        };
        for h in &r.rule.hosts {
            for p in &prefixes {
                let slot = hosts.entry(h.as_str()).or_default();
                if let Some(other) = slot.get(p) {
                    problems.push(problem(format!(
                        "host {h} path {} is already routed by {} (service {})",
                        if p.is_empty() { "/" } else { p },
                        other.router,
                        other.service
                    )));
                } else {
                    slot.insert(p, r);
                }
            }
        }
    }

    let mut out = String::new();
    let _ = writeln!(out, "# {HEADER}");
    out.push_str("\nmap $http_upgrade $infra_gw_connection {\n    default upgrade;\n    ''      close;\n}\n");
    for (name, servers) in &table.upstreams {
        let _ = writeln!(out, "\nupstream {name} {{");
        for s in servers {
            let _ = writeln!(
                out,
                "    server {}:{} max_fails=1 fail_timeout=2s;  # {}",
                s.host, s.port, s.note
            );
        }
        out.push_str("}\n");
    }
    for (host, locations) in &hosts {
        let _ = writeln!(out, "\nserver {{\n    listen {listen};\n    server_name {host};");
        let auths: std::collections::BTreeSet<&str> = locations.values().filter_map(|r| table.protection(r)).collect();
        // One forward-auth per server block: the /oauth2/ paths are its.
        let auth = auths.iter().next().copied();
        let auth_up = auth.and_then(|a| table.auth.get(a)).and_then(|(_, up)| up.clone());
        if let Some(up) = &auth_up {
            let _ = write!(
                out,
                "
    location = /oauth2/auth {{
        internal;
        proxy_pass http://{up};
        proxy_pass_request_body off;
        proxy_set_header Content-Length \"\";
        proxy_set_header Host $host;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Forwarded-Host $host;
        proxy_set_header X-Forwarded-Uri $request_uri;
        proxy_set_header X-Original-URI $request_uri;
    }}

    location ^~ /oauth2/ {{
        proxy_pass http://{up};
        proxy_set_header Host $host;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Forwarded-Host $host;
        proxy_set_header X-Auth-Request-Redirect $request_uri;
    }}

    location @infra_gw_signin {{
        return 302 /oauth2/start?rd=$scheme://$host$request_uri;
    }}
"
            );
        }
        for (prefix, r) in locations {
            let Some(up) = Table::upstream_of(r) else { continue };
            let loc = if prefix.is_empty() {
                "location /".to_owned()
            } else {
                format!("location ^~ {prefix}")
            };
            let _ = writeln!(out, "\n    # router {} (service {})\n    {loc} {{", r.router, r.service);
            if let Some(a) = table.protection(r) {
                match (&auth_up, Some(a) == auth) {
                    (Some(_), true) => {
                        out.push_str(
                            "        auth_request /oauth2/auth;\n        error_page 401 = @infra_gw_signin;\n",
                        );
                        if let Some((f, _)) = table.auth.get(a) {
                            for h in &f.response_headers {
                                let var = format!("$infra_gw_{}", h.to_ascii_lowercase().replace('-', "_"));
                                let up_var = format!("$upstream_http_{}", h.to_ascii_lowercase().replace('-', "_"));
                                let _ = writeln!(out, "        auth_request_set {var} {up_var};");
                                let _ = writeln!(out, "        proxy_set_header {h} {var};");
                            }
                        }
                    }
                    _ => {
                        // Fail closed: the auth service is not healthy.
                        let _ = writeln!(
                            out,
                            "        # {a}: no healthy replica answers auth requests\n        return 503;\n    }}"
                        );
                        continue;
                    }
                }
            }
            let _ = write!(
                out,
                "        proxy_pass http://{up};
        proxy_http_version 1.1;
        proxy_set_header Host $host;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $infra_gw_connection;
        proxy_next_upstream error timeout http_502 http_503;
        proxy_connect_timeout 2s;
    }}
"
            );
        }
        out.push_str("}\n");
    }
    (out, problems)
}

#[cfg(test)]
mod tests {
    use infra_proto::bus::v1::Health;

    use super::super::table::tests::{GRAFANA, build_on, desired, observed};
    use super::*;

    const MAILHOG: &[(&str, &str)] = &[
        ("traefik.enable", "true"),
        ("traefik.http.routers.mailhog.rule", "Host(`mail.localhost`)"),
        ("traefik.http.routers.mailhog.middlewares", "oauth2-proxy@docker"),
        ("traefik.http.services.mailhog.loadbalancer.server.port", "8025"),
    ];
    const OAUTH2: &[(&str, &str)] = &[
        ("traefik.enable", "true"),
        ("traefik.http.routers.oauth2-proxy.rule", "Host(`auth.localhost`)"),
        ("traefik.http.services.oauth2-proxy.loadbalancer.server.port", "4180"),
        (
            "traefik.http.middlewares.oauth2-proxy.forwardauth.address",
            "http://oauth2-proxy:4180/",
        ),
        (
            "traefik.http.middlewares.oauth2-proxy.forwardauth.trustForwardHeader",
            "true",
        ),
        (
            "traefik.http.middlewares.oauth2-proxy.forwardauth.authResponseHeaders",
            "X-Auth-Request-User",
        ),
    ];

    #[test]
    fn nginx_gets_one_upstream_per_service_and_a_server_per_host_name() {
        let (t, _) = build_on(
            "host1",
            &[desired("host2", "grafana", GRAFANA, &[(3000, 3000)])],
            &[observed("host2", "grafana", Health::Healthy)],
        );
        let (conf, problems) = nginx(&t, 80);
        assert_eq!(problems, vec![]);
        assert!(conf.contains("upstream grafana {\n    server 10.0.0.2:3000"), "{conf}");
        assert!(conf.contains("server_name grafana.localhost;"), "{conf}");
        assert!(
            conf.contains("location / {\n        proxy_pass http://grafana;"),
            "{conf}"
        );
        assert!(!conf.contains("auth_request"), "{conf}");
    }

    #[test]
    fn the_same_table_renders_the_same_bytes() {
        let d = [desired("host2", "grafana", GRAFANA, &[(3000, 3000)])];
        let o = [observed("host2", "grafana", Health::Healthy)];
        let (a, _) = build_on("host1", &d, &o);
        let (b, _) = build_on("host1", &d, &o);
        assert_eq!(nginx(&a, 80).0, nginx(&b, 80).0);
        assert_eq!(traefik(&a), traefik(&b));
    }

    #[test]
    fn a_protected_route_goes_through_auth_request_in_nginx_and_forward_auth_in_traefik() {
        let (t, p) = build_on(
            "host1",
            &[
                desired("host1", "mailhog", MAILHOG, &[]),
                desired("host1", "oauth2-proxy", OAUTH2, &[]),
            ],
            &[
                observed("host1", "mailhog", Health::Healthy),
                observed("host1", "oauth2-proxy", Health::Healthy),
            ],
        );
        assert_eq!(p, vec![]);
        let (conf, problems) = nginx(&t, 80);
        assert_eq!(problems, vec![]);
        let mail = &conf[conf.find("server_name mail.localhost").unwrap()..];
        assert!(mail.contains("auth_request /oauth2/auth;"), "{conf}");
        assert!(mail.contains("location = /oauth2/auth {"), "{conf}");
        assert!(
            mail.contains("proxy_set_header X-Auth-Request-User $infra_gw_x_auth_request_user;"),
            "{conf}"
        );
        let auth = &conf[conf.find("server_name auth.localhost").unwrap()..];
        assert!(!auth[..auth.find("\n}").unwrap()].contains("auth_request "), "{conf}");

        let y: serde_json::Value = serde_norway::from_str(&traefik(&t)).unwrap();
        assert_eq!(y["http"]["routers"]["mailhog"]["middlewares"][0], "oauth2-proxy");
        let fa = &y["http"]["middlewares"]["oauth2-proxy"]["forwardAuth"];
        assert_eq!(fa["address"], "http://infra-oauth2-proxy-1:4180/");
        assert_eq!(fa["trustForwardHeader"], true);
        assert_eq!(fa["authResponseHeaders"][0], "X-Auth-Request-User");
    }

    #[test]
    fn a_protected_route_fails_closed_when_no_auth_replica_is_healthy() {
        let (t, _) = build_on(
            "host1",
            &[desired("host1", "mailhog", MAILHOG, &[])],
            &[observed("host1", "mailhog", Health::Healthy)],
        );
        let (conf, _) = nginx(&t, 80);
        let mail = &conf[conf.find("server_name mail.localhost").unwrap()..];
        assert!(mail.contains("return 503;"), "{conf}");
        assert!(!mail.contains("proxy_pass http://mailhog"), "{conf}");
    }

    #[test]
    fn traefik_gets_routers_services_and_tls_from_the_labels() {
        let (t, _) = build_on(
            "host1",
            &[desired("host2", "grafana", GRAFANA, &[(3000, 3000)])],
            &[observed("host2", "grafana", Health::Healthy)],
        );
        let y: serde_json::Value = serde_norway::from_str(&traefik(&t)).unwrap();
        let r = &y["http"]["routers"]["grafana"];
        assert_eq!(r["rule"], "Host(`grafana.localhost`)");
        assert_eq!(r["entryPoints"][0], "websecure");
        assert_eq!(r["service"], "grafana");
        assert!(r["tls"].is_object());
        assert_eq!(
            y["http"]["services"]["grafana"]["loadBalancer"]["servers"][0]["url"],
            "http://10.0.0.2:3000"
        );
    }

    #[test]
    fn an_unknown_middleware_keeps_the_route_out_of_nginx_and_says_so() {
        let mut l = GRAFANA.to_vec();
        l.push(("traefik.http.routers.grafana.middlewares", "ratelimit@file"));
        let (t, _) = build_on(
            "host1",
            &[desired("host1", "grafana", &l, &[])],
            &[observed("host1", "grafana", Health::Healthy)],
        );
        let (conf, problems) = nginx(&t, 80);
        assert!(!conf.contains("server_name grafana.localhost"), "{conf}");
        assert_eq!(problems[0].key, "traefik.http.routers.grafana.middlewares");
        assert!(traefik(&t).contains("ratelimit@file"));
    }

    #[test]
    fn no_routes_render_a_valid_empty_file() {
        let (t, _) = build_on("host1", &[], &[]);
        let (conf, _) = nginx(&t, 80);
        assert!(!conf.contains("server {"), "{conf}");
        let y: serde_json::Value = serde_norway::from_str(&traefik(&t)).unwrap();
        assert!(y.as_object().unwrap().is_empty());
    }
}
