//! The routes a service declares with Traefik labels, as the seeds write
//! them (`traefik.enable`, `traefik.http.routers.<name>.*`,
//! `traefik.http.services.<name>.loadbalancer.server.port`,
//! `traefik.http.middlewares.<name>.forwardauth.*`).
//!
//! Pure functions: a label set in, routes and errors out. One broken
//! router never hides another: each error names the service, the label key
//! and what is wrong, and only that router is dropped. Values that end up
//! in a rendered Nginx or Traefik file (host names, path prefixes, names)
//! are checked here, so a label cannot inject configuration.

use std::collections::BTreeMap;

/// The prefix of every label this module reads.
const TRAEFIK: &str = "traefik.";
const ROUTERS: &str = "traefik.http.routers.";
const SERVICES: &str = "traefik.http.services.";
const MIDDLEWARES: &str = "traefik.http.middlewares.";

/// The forward-auth middleware the seeds define on OAuth2 Proxy and other
/// stacks reference as `oauth2-proxy@docker`: protected even when no
/// deployed service defines it (then protected routes fail closed).
pub const OAUTH2_PROXY_MIDDLEWARE: &str = "oauth2-proxy";

/// One HTTP router of one service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The catalog service whose labels declare it.
    pub service: String,
    /// The router's name (`grafana`).
    pub router: String,
    /// What requests it matches.
    pub rule: Rule,
    /// Traefik entry points (`websecure`); empty means all.
    pub entrypoints: Vec<String>,
    /// TLS termination asked for (`...tls=true`).
    pub tls: bool,
    /// Middleware references as written (`oauth2-proxy@docker`).
    pub middlewares: Vec<String>,
    /// Where matched requests go.
    pub backend: Backend,
}

/// Where a router sends requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A load balancer over the service's replicas on `port`.
    Port {
        /// The Traefik service name (`grafana`).
        name: String,
        /// The container port.
        port: u16,
    },
    /// A Traefik-internal service (`api@internal`): Traefik only.
    Internal(String),
}

/// A router rule: `Host(..) && PathPrefix(..)`, each side optional, each a
/// set of alternatives (`(PathPrefix(`/a`) || PathPrefix(`/b`))`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// Host names (lower case); empty means any host.
    pub hosts: Vec<String>,
    /// Path prefixes (each starts with `/`); empty means every path.
    pub path_prefixes: Vec<String>,
}

impl Rule {
    /// The rule in Traefik's syntax, canonical (what the Traefik rendering
    /// writes, so only checked values reach it).
    pub fn to_traefik(&self) -> String {
        let group = |m: &str, vals: &[String]| {
            let parts: Vec<String> = vals.iter().map(|v| format!("{m}(`{v}`)")).collect();
            if parts.len() > 1 {
                format!("({})", parts.join(" || "))
            } else {
                parts.join("")
            }
        };
        let mut terms = Vec::new();
        if !self.hosts.is_empty() {
            terms.push(group("Host", &self.hosts));
        }
        if !self.path_prefixes.is_empty() {
            terms.push(group("PathPrefix", &self.path_prefixes));
        }
        terms.join(" && ")
    }
}

/// A forward-auth middleware a service defines (OAuth2 Proxy's
/// `traefik.http.middlewares.oauth2-proxy.forwardauth.*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForwardAuth {
    /// The middleware name (`oauth2-proxy`).
    pub name: String,
    /// The service that defines it (and answers the auth requests).
    pub service: String,
    /// `forwardauth.address` as written (`http://oauth2-proxy:4180/`).
    pub address: String,
    /// The port of `address` (80 when it names none).
    pub port: u16,
    /// `forwardauth.trustForwardHeader`.
    pub trust_forward_header: bool,
    /// `forwardauth.authResponseHeaders`: copied from the auth answer to
    /// the request sent upstream.
    pub response_headers: Vec<String>,
}

/// A label that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
#[error("service {service}: label {key}: {problem}")]
pub struct LabelError {
    /// The service whose labels hold it.
    pub service: String,
    /// The label key (`traefik.http.routers.grafana.rule`).
    pub key: String,
    /// What is wrong with it.
    pub problem: String,
}

/// Everything one service's labels declare.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// The routers that parse.
    pub routes: Vec<Route>,
    /// The forward-auth middlewares it defines.
    pub forward_auth: Vec<ForwardAuth>,
    /// One per broken router or definition (that router is dropped).
    pub errors: Vec<LabelError>,
}

/// The routes `service` declares in `labels`; `ports` are its container
/// ports, for a router with no explicit port (Traefik's rule: a single
/// port is used; several need `loadbalancer.server.port`). A service
/// without `traefik.enable=true` declares nothing (`exposedByDefault`
/// is off in this platform).
pub fn parse<'a>(service: &str, labels: impl IntoIterator<Item = (&'a String, &'a String)>, ports: &[u16]) -> Parsed {
    let labels: BTreeMap<&str, &str> = labels
        .into_iter()
        .filter(|(k, _)| k.starts_with(TRAEFIK))
        .map(|(k, v)| (k.as_str(), v.trim()))
        .collect();
    let mut out = Parsed::default();
    let err = |key: &str, problem: String| LabelError {
        service: service.to_owned(),
        key: key.to_owned(),
        problem,
    };
    match labels.get("traefik.enable").copied() {
        None | Some("false") => return out,
        Some("true") => {}
        Some(other) => {
            out.errors.push(err(
                "traefik.enable",
                format!("{other:?} is not a boolean (true or false)"),
            ));
            return out;
        }
    }

    // Services: name -> port (None: defined without a port).
    let mut lb: BTreeMap<&str, Result<Option<u16>, LabelError>> = BTreeMap::new();
    for (key, value) in labels.range(SERVICES..) {
        let Some(rest) = key.strip_prefix(SERVICES) else { break };
        let Some((name, attr)) = rest.split_once('.') else {
            out.errors.push(err(key, "names a service but no option".into()));
            continue;
        };
        let entry = lb.entry(name).or_insert(Ok(None));
        if let Err(e) = check_name(name) {
            *entry = Err(err(key, e));
            continue;
        }
        if attr.eq_ignore_ascii_case("loadbalancer.server.port") {
            match value.parse::<u16>() {
                Ok(p) if p > 0 => {
                    if entry.is_ok() {
                        *entry = Ok(Some(p));
                    }
                }
                _ => *entry = Err(err(key, format!("{value:?} is not a port (1-65535)"))),
            }
        }
    }

    // Forward-auth middlewares.
    let mut fa: BTreeMap<&str, BTreeMap<String, (&str, &str)>> = BTreeMap::new();
    for (key, value) in labels.range(MIDDLEWARES..) {
        let Some(rest) = key.strip_prefix(MIDDLEWARES) else {
            break;
        };
        let Some((name, attr)) = rest.split_once('.') else {
            continue;
        };
        if let Some(opt) = attr.to_ascii_lowercase().strip_prefix("forwardauth.") {
            fa.entry(name).or_default().insert(opt.to_owned(), (key, value));
        }
    }
    for (name, opts) in fa {
        match forward_auth(service, name, &opts) {
            Ok(f) => out.forward_auth.push(f),
            Err(e) => out.errors.push(e),
        }
    }

    // Routers: name -> attr -> (key, value).
    let mut routers: BTreeMap<&str, BTreeMap<String, (&str, &str)>> = BTreeMap::new();
    for (key, value) in labels.range(ROUTERS..) {
        let Some(rest) = key.strip_prefix(ROUTERS) else { break };
        let (name, attr) = rest.split_once('.').unwrap_or((rest, ""));
        routers
            .entry(name)
            .or_default()
            .insert(attr.to_ascii_lowercase(), (key, value));
    }
    for (name, attrs) in routers {
        match router(service, name, &attrs, &lb, ports) {
            Ok(r) => out.routes.push(r),
            Err(e) => out.errors.push(e),
        }
    }
    for (_, res) in lb {
        if let Err(e) = res
            && !out.errors.contains(&e)
        {
            out.errors.push(e);
        }
    }
    out
}

fn router(
    service: &str,
    name: &str,
    attrs: &BTreeMap<String, (&str, &str)>,
    lb: &BTreeMap<&str, Result<Option<u16>, LabelError>>,
    ports: &[u16],
) -> Result<Route, LabelError> {
    let err = |key: &str, problem: String| LabelError {
        service: service.to_owned(),
        key: key.to_owned(),
        problem,
    };
    let any_key = attrs.values().next().map_or("", |(k, _)| *k);
    check_name(name).map_err(|e| err(any_key, e))?;
    for (attr, (key, _)) in attrs {
        let known = matches!(
            attr.as_str(),
            "rule" | "entrypoints" | "tls" | "middlewares" | "service" | "priority" | "observability"
        ) || attr.starts_with("tls.")
            || attr.starts_with("observability.");
        if !known {
            return Err(err(
                key,
                format!("unknown router option {attr:?} (rule, entrypoints, tls, middlewares, service, priority)"),
            ));
        }
    }
    let (rule_key, rule_value) = attrs
        .get("rule")
        .copied()
        .ok_or_else(|| err(&format!("{ROUTERS}{name}.rule"), "the router has no rule".into()))?;
    let rule = parse_rule(rule_value).map_err(|e| err(rule_key, e))?;
    let list = |attr: &str| -> Result<Vec<String>, LabelError> {
        let Some((key, value)) = attrs.get(attr) else {
            return Ok(Vec::new());
        };
        value
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| check_ref(s).map(|()| s.to_owned()).map_err(|e| err(key, e)))
            .collect()
    };
    let entrypoints = list("entrypoints")?;
    let middlewares = list("middlewares")?;
    let tls = match attrs.get("tls") {
        None => attrs.keys().any(|a| a.starts_with("tls.")),
        Some((_, "true")) => true,
        Some((_, "false")) => false,
        Some((key, v)) => return Err(err(key, format!("{v:?} is not a boolean (true or false)"))),
    };
    if let Some((key, v)) = attrs.get("priority")
        && v.parse::<i64>().is_err()
    {
        return Err(err(key, format!("{v:?} is not a number")));
    }
    let port_key = |svc: &str| format!("{SERVICES}{svc}.loadbalancer.server.port");
    let implicit = |svc: &str, key: &str| -> Result<Backend, LabelError> {
        match ports {
            [p] => Ok(Backend::Port {
                name: svc.to_owned(),
                port: *p,
            }),
            [] => Err(err(key, format!("no port to route to: set {}", port_key(svc)))),
            _ => Err(err(
                key,
                format!("the service has several ports ({ports:?}): set {}", port_key(svc)),
            )),
        }
    };
    let backend = match attrs.get("service") {
        Some((key, v)) if v.ends_with("@internal") => {
            check_ref(v).map_err(|e| err(key, e))?;
            Backend::Internal((*v).to_owned())
        }
        Some((key, v)) => {
            let target = v.strip_suffix("@docker").unwrap_or(v);
            match lb.get(target) {
                Some(Ok(Some(port))) => Backend::Port {
                    name: target.to_owned(),
                    port: *port,
                },
                Some(Ok(None)) => implicit(target, key)?,
                Some(Err(e)) => return Err(e.clone()),
                None => {
                    return Err(err(
                        key,
                        format!("service {v:?} is not defined by this service's labels ({SERVICES}{target}.*)"),
                    ));
                }
            }
        }
        None => match lb.iter().collect::<Vec<_>>().as_slice() {
            [] => implicit(service, rule_key)?,
            [(svc, Ok(Some(port)))] => Backend::Port {
                name: (**svc).to_owned(),
                port: *port,
            },
            [(svc, Ok(None))] => implicit(svc, rule_key)?,
            [(_, Err(e))] => return Err(e.clone()),
            many => {
                let names: Vec<&str> = many.iter().map(|(n, _)| **n).collect();
                return Err(err(
                    &format!("{ROUTERS}{name}.service"),
                    format!("the labels define several services ({names:?}): say which one"),
                ));
            }
        },
    };
    Ok(Route {
        service: service.to_owned(),
        router: name.to_owned(),
        rule,
        entrypoints,
        tls,
        middlewares,
        backend,
    })
}

fn forward_auth(service: &str, name: &str, opts: &BTreeMap<String, (&str, &str)>) -> Result<ForwardAuth, LabelError> {
    let err = |key: &str, problem: String| LabelError {
        service: service.to_owned(),
        key: key.to_owned(),
        problem,
    };
    let any_key = opts.values().next().map_or("", |(k, _)| *k);
    check_name(name).map_err(|e| err(any_key, e))?;
    let (akey, address) = opts
        .get("address")
        .copied()
        .ok_or_else(|| err(&format!("{MIDDLEWARES}{name}.forwardauth.address"), "missing".into()))?;
    let port = url_port(address).map_err(|e| err(akey, e))?;
    let trust_forward_header = match opts.get("trustforwardheader") {
        None | Some((_, "false")) => false,
        Some((_, "true")) => true,
        Some((key, v)) => return Err(err(key, format!("{v:?} is not a boolean (true or false)"))),
    };
    let response_headers = match opts.get("authresponseheaders") {
        None => Vec::new(),
        Some((key, v)) => v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|h| {
                if h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                    Ok(h.to_owned())
                } else {
                    Err(err(key, format!("{h:?} is not a header name")))
                }
            })
            .collect::<Result<_, _>>()?,
    };
    Ok(ForwardAuth {
        name: name.to_owned(),
        service: service.to_owned(),
        address: address.to_owned(),
        port,
        trust_forward_header,
        response_headers,
    })
}

/// The port of an `http://host[:port][/path]` address.
fn url_port(address: &str) -> Result<u16, String> {
    let rest = address
        .strip_prefix("http://")
        .ok_or_else(|| format!("{address:?} is not an http:// address"))?;
    let authority = rest.split('/').next().unwrap_or("");
    match authority.rsplit_once(':') {
        None if !authority.is_empty() => Ok(80),
        Some((h, p)) if !h.is_empty() => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{p:?} in {address:?} is not a port")),
        _ => Err(format!("{address:?} names no host")),
    }
}

/// Router, service and middleware names: what Traefik accepts and what
/// is safe in an Nginx or YAML file.
fn check_name(name: &str) -> Result<(), String> {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)) {
        Ok(())
    } else {
        Err(format!("{name:?} is not a name (letters, digits, - and _)"))
    }
}

/// A reference to an entry point, middleware or service, with an optional
/// `@provider`.
fn check_ref(s: &str) -> Result<(), String> {
    let (name, provider) = s.split_once('@').unwrap_or((s, "docker"));
    check_name(name)?;
    check_name(provider).map_err(|_| format!("{s:?}: {provider:?} is not a provider name"))
}

/// Parses a rule: `term (&& term)*`, a term being `Host(..)`,
/// `PathPrefix(..)` or a parenthesised `||` of one of them.
pub fn parse_rule(rule: &str) -> Result<Rule, String> {
    let mut p = RuleParser { s: rule, i: 0 };
    let mut out = Rule::default();
    let mut seen_host = false;
    let mut seen_path = false;
    loop {
        let (kind, values) = p.term()?;
        let (seen, dest) = match kind {
            Matcher::Host => (&mut seen_host, &mut out.hosts),
            Matcher::PathPrefix => (&mut seen_path, &mut out.path_prefixes),
        };
        if *seen {
            return Err(format!(
                "{} appears twice joined by &&: no request can match both",
                kind.name()
            ));
        }
        *seen = true;
        dest.extend(values);
        p.ws();
        if p.eat("&&") {
            continue;
        }
        if p.peek("||") {
            return Err("`||` is supported only inside parentheses, over matchers of one kind \
                        (`Host(`a`) && (PathPrefix(`/x`) || PathPrefix(`/y`))`)"
                .into());
        }
        if p.i < p.s.len() {
            return Err(format!("unexpected {:?} at character {}", &p.s[p.i..], p.i + 1));
        }
        return Ok(out);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Matcher {
    Host,
    PathPrefix,
}

impl Matcher {
    fn name(self) -> &'static str {
        match self {
            Matcher::Host => "Host",
            Matcher::PathPrefix => "PathPrefix",
        }
    }
}

struct RuleParser<'a> {
    s: &'a str,
    i: usize,
}

impl RuleParser<'_> {
    fn ws(&mut self) {
        while self.s[self.i..].starts_with(char::is_whitespace) {
            self.i += self.s[self.i..].chars().next().map_or(1, char::len_utf8);
        }
    }

    fn peek(&mut self, t: &str) -> bool {
        self.ws();
        self.s[self.i..].starts_with(t)
    }

    fn eat(&mut self, t: &str) -> bool {
        if self.peek(t) {
            self.i += t.len();
            true
        } else {
            false
        }
    }

    fn term(&mut self) -> Result<(Matcher, Vec<String>), String> {
        if self.eat("(") {
            let (kind, mut values) = self.matcher()?;
            while self.eat("||") {
                let (k, v) = self.matcher()?;
                if k != kind {
                    return Err(format!(
                        "`||` joins {} and {}: only alternatives of one matcher are supported",
                        kind.name(),
                        k.name()
                    ));
                }
                values.extend(v);
            }
            if !self.eat(")") {
                return Err(format!("missing `)` at character {}", self.i + 1));
            }
            return Ok((kind, values));
        }
        self.matcher()
    }

    fn matcher(&mut self) -> Result<(Matcher, Vec<String>), String> {
        self.ws();
        let rest = &self.s[self.i..];
        let word: String = rest.chars().take_while(char::is_ascii_alphanumeric).collect();
        let kind = match word.as_str() {
            "Host" => Matcher::Host,
            "PathPrefix" => Matcher::PathPrefix,
            "" => {
                return Err(format!(
                    "expected Host(..) or PathPrefix(..) at character {}",
                    self.i + 1
                ));
            }
            other => {
                return Err(format!("matcher {other} is not supported (Host and PathPrefix are)"));
            }
        };
        self.i += word.len();
        if !self.eat("(") {
            return Err(format!("{word} needs `(` at character {}", self.i + 1));
        }
        let mut values = Vec::new();
        loop {
            self.ws();
            let q = self.s[self.i..].chars().next();
            let Some(q @ ('`' | '"')) = q else {
                return Err(format!(
                    "{word} takes quoted values (`...`), at character {}",
                    self.i + 1
                ));
            };
            let start = self.i + 1;
            let end = self.s[start..]
                .find(q)
                .map(|n| start + n)
                .ok_or_else(|| format!("unterminated {q} in {word}(..)"))?;
            let v = &self.s[start..end];
            self.i = end + 1;
            values.push(match kind {
                Matcher::Host => check_host(v)?,
                Matcher::PathPrefix => check_path(v)?,
            });
            if self.eat(",") {
                continue;
            }
            if self.eat(")") {
                return Ok((kind, values));
            }
            return Err(format!("{word}(..) needs `)` at character {}", self.i + 1));
        }
    }
}

fn check_host(h: &str) -> Result<String, String> {
    let ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if ok {
        Ok(h.to_ascii_lowercase())
    } else {
        Err(format!("{h:?} is not a host name"))
    }
}

fn check_path(p: &str) -> Result<String, String> {
    let ok = p.starts_with('/') && p.chars().all(|c| c.is_ascii_graphic() && !";{}\"'`$\\#".contains(c));
    if ok {
        Ok(p.to_owned())
    } else {
        Err(format!(
            "{p:?} is not a path prefix (starts with /; no spaces, quotes, ;, {{, }}, $, # or \\)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn grafana() -> BTreeMap<String, String> {
        labels(&[
            ("traefik.enable", "true"),
            ("traefik.http.routers.grafana.rule", "Host(`grafana.localhost`)"),
            ("traefik.http.routers.grafana.entrypoints", "websecure"),
            ("traefik.http.routers.grafana.tls", "true"),
            ("traefik.http.services.grafana.loadbalancer.server.port", "3000"),
        ])
    }

    #[test]
    fn the_seeds_grafana_labels_give_one_route_on_port_3000() {
        let p = parse("grafana", &grafana(), &[]);
        assert_eq!(p.errors, vec![]);
        assert_eq!(
            p.routes,
            vec![Route {
                service: "grafana".into(),
                router: "grafana".into(),
                rule: Rule {
                    hosts: vec!["grafana.localhost".into()],
                    path_prefixes: vec![],
                },
                entrypoints: vec!["websecure".into()],
                tls: true,
                middlewares: vec![],
                backend: Backend::Port {
                    name: "grafana".into(),
                    port: 3000
                },
            }]
        );
    }

    #[test]
    fn a_service_without_traefik_enable_declares_nothing() {
        let mut l = grafana();
        l.remove("traefik.enable");
        assert_eq!(parse("grafana", &l, &[]), Parsed::default());
        l.insert("traefik.enable".into(), "false".into());
        assert_eq!(parse("grafana", &l, &[]), Parsed::default());
    }

    #[test]
    fn host_and_path_prefix_joined_by_and_both_apply() {
        let r = parse_rule("Host(`a.example`) && PathPrefix(`/api/`)").unwrap();
        assert_eq!(r.hosts, vec!["a.example"]);
        assert_eq!(r.path_prefixes, vec!["/api/"]);
        assert_eq!(r.to_traefik(), "Host(`a.example`) && PathPrefix(`/api/`)");
        assert_eq!(parse_rule("PathPrefix(`/x`)").unwrap().hosts, Vec::<String>::new());
    }

    #[test]
    fn harbors_parenthesised_alternatives_of_path_prefixes_are_kept() {
        let r = parse_rule("Host(`harbor.localhost`) && (PathPrefix(`/api/`) || PathPrefix(`/v2`))").unwrap();
        assert_eq!(r.path_prefixes, vec!["/api/", "/v2"]);
        assert_eq!(
            r.to_traefik(),
            "Host(`harbor.localhost`) && (PathPrefix(`/api/`) || PathPrefix(`/v2`))"
        );
    }

    #[test]
    fn unsupported_rules_say_what_is_wrong() {
        for (rule, says) in [
            ("Path(`/x`)", "matcher Path is not supported"),
            ("Host(`a`) || Host(`b`)", "only inside parentheses"),
            ("Host(`a`) && Host(`b`)", "appears twice"),
            ("Host(`a b`)", "is not a host name"),
            ("Host(`a`", "needs `)`"),
            ("PathPrefix(`api`)", "is not a path prefix"),
            ("PathPrefix(`/a;b`)", "is not a path prefix"),
            ("Host(a)", "quoted values"),
            ("(Host(`a`) || PathPrefix(`/b`))", "only alternatives of one matcher"),
        ] {
            let e = parse_rule(rule).unwrap_err();
            assert!(e.contains(says), "{rule}: {e}");
        }
    }

    #[test]
    fn a_broken_router_is_reported_with_service_and_key_and_the_other_routers_stay() {
        let mut l = grafana();
        l.insert("traefik.http.routers.bad.rule".into(), "Header(`x`, `y`)".into());
        l.insert("traefik.http.routers.bad.service".into(), "grafana".into());
        let p = parse("grafana", &l, &[]);
        assert_eq!(p.routes.len(), 1);
        assert_eq!(p.routes[0].router, "grafana");
        assert_eq!(p.errors.len(), 1);
        let e = &p.errors[0];
        assert_eq!(e.service, "grafana");
        assert_eq!(e.key, "traefik.http.routers.bad.rule");
        assert!(
            e.to_string()
                .starts_with("service grafana: label traefik.http.routers.bad.rule: matcher Header"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_port_names_the_port_label() {
        let mut l = grafana();
        l.insert(
            "traefik.http.services.grafana.loadbalancer.server.port".into(),
            "http".into(),
        );
        let p = parse("grafana", &l, &[]);
        assert!(p.routes.is_empty());
        assert_eq!(p.errors.len(), 1, "{:?}", p.errors);
        assert_eq!(
            p.errors[0].key,
            "traefik.http.services.grafana.loadbalancer.server.port"
        );
        assert!(p.errors[0].problem.contains("is not a port"));
    }

    #[test]
    fn without_a_port_label_the_single_container_port_is_used_and_several_are_an_error() {
        let l = labels(&[
            ("traefik.enable", "true"),
            ("traefik.http.routers.web.rule", "Host(`web.localhost`)"),
        ]);
        let p = parse("web", &l, &[8080]);
        assert_eq!(
            p.routes[0].backend,
            Backend::Port {
                name: "web".into(),
                port: 8080
            }
        );
        let p = parse("web", &l, &[80, 443]);
        assert!(p.routes.is_empty());
        assert!(p.errors[0].problem.contains("several ports"), "{:?}", p.errors);
        let p = parse("web", &l, &[]);
        assert!(p.errors[0].problem.contains("no port"), "{:?}", p.errors);
    }

    #[test]
    fn traefik_internal_services_and_middlewares_are_kept_as_written() {
        let l = labels(&[
            ("traefik.enable", "true"),
            ("traefik.http.routers.dashboard.rule", "Host(`dashboard.localhost`)"),
            ("traefik.http.routers.dashboard.service", "api@internal"),
            (
                "traefik.http.routers.dashboard.middlewares",
                "oauth2-proxy@docker, other",
            ),
        ]);
        let p = parse("traefik", &l, &[]);
        assert_eq!(p.errors, vec![]);
        assert_eq!(p.routes[0].backend, Backend::Internal("api@internal".into()));
        assert_eq!(p.routes[0].middlewares, vec!["oauth2-proxy@docker", "other"]);
    }

    #[test]
    fn oauth2_proxys_forward_auth_middleware_is_read_with_its_port_and_headers() {
        let l = labels(&[
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
                "X-Auth-Request-User,X-Auth-Request-Email",
            ),
        ]);
        let p = parse("oauth2-proxy", &l, &[]);
        assert_eq!(p.errors, vec![]);
        assert_eq!(
            p.forward_auth,
            vec![ForwardAuth {
                name: "oauth2-proxy".into(),
                service: "oauth2-proxy".into(),
                address: "http://oauth2-proxy:4180/".into(),
                port: 4180,
                trust_forward_header: true,
                response_headers: vec!["X-Auth-Request-User".into(), "X-Auth-Request-Email".into()],
            }]
        );
    }

    #[test]
    fn unknown_router_options_and_bad_booleans_are_errors() {
        let mut l = grafana();
        l.insert("traefik.http.routers.grafana.rulez".into(), "x".into());
        let p = parse("grafana", &l, &[]);
        assert!(p.errors[0].problem.contains("unknown router option"), "{:?}", p.errors);
        let mut l = grafana();
        l.insert("traefik.http.routers.grafana.tls".into(), "yes".into());
        let p = parse("grafana", &l, &[]);
        assert_eq!(p.errors[0].key, "traefik.http.routers.grafana.tls");
        let mut l = grafana();
        l.insert("traefik.enable".into(), "on".into());
        assert_eq!(parse("grafana", &l, &[]).errors[0].key, "traefik.enable");
    }

    #[test]
    fn a_router_naming_an_undefined_service_is_an_error() {
        let mut l = grafana();
        l.insert("traefik.http.routers.grafana.service".into(), "nope".into());
        let p = parse("grafana", &l, &[]);
        assert_eq!(p.errors[0].key, "traefik.http.routers.grafana.service");
        assert!(p.errors[0].problem.contains("not defined"));
    }
}
