//! The dependency graph of a set of services: bring-up order, parallel
//! layers, and who is blocked when something fails.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::Catalog;
use crate::error::GraphError;
use crate::model::{Dependency, DependencyCondition};

/// `depends_on` edges among a set of services, checked to be acyclic.
///
/// Built by [`Catalog::graph`]; edges to services outside the set are left
/// out (a `required: false` dependency that was not selected).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    deps: BTreeMap<String, Vec<Dependency>>,
    dependents: BTreeMap<String, BTreeSet<String>>,
    order: Vec<String>,
    levels: Vec<Vec<String>>,
}

impl Catalog {
    /// Builds the graph over `names` (usually the result of [`Catalog::select`]).
    ///
    /// Fails on a name the catalog lacks, a dependency on an unknown service,
    /// a `service_healthy` dependency on a service without a healthcheck
    /// (bring-up would wait forever), and cycles.
    pub fn graph(&self, names: &BTreeSet<String>) -> Result<Graph, GraphError> {
        let mut deps = BTreeMap::new();
        let mut dependents: BTreeMap<String, BTreeSet<String>> =
            names.iter().map(|n| (n.clone(), BTreeSet::new())).collect();
        for name in names {
            let svc = self
                .services
                .get(name)
                .ok_or_else(|| GraphError::UnknownService { name: name.clone() })?;
            let mut edges = Vec::new();
            for d in &svc.depends_on {
                let Some(target) = self.services.get(&d.service) else {
                    if !d.required {
                        continue;
                    }
                    return Err(GraphError::UnknownDependency {
                        service: name.clone(),
                        dependency: d.service.clone(),
                        file: svc.file.clone(),
                        line: svc.line,
                    });
                };
                if d.condition == DependencyCondition::ServiceHealthy && !target.has_healthcheck() {
                    return Err(GraphError::NoHealthcheck {
                        service: name.clone(),
                        dependency: d.service.clone(),
                        file: svc.file.clone(),
                        dependency_file: target.file.clone(),
                    });
                }
                if names.contains(&d.service) {
                    edges.push(d.clone());
                    if let Some(set) = dependents.get_mut(&d.service) {
                        set.insert(name.clone());
                    }
                }
            }
            edges.sort_by(|a, b| a.service.cmp(&b.service));
            deps.insert(name.clone(), edges);
        }

        // Kahn's algorithm; the ready set is ordered, so ties go by name.
        let mut pending: BTreeMap<&str, usize> = deps.iter().map(|(n, e)| (n.as_str(), e.len())).collect();
        let mut ready: BTreeSet<&str> = pending.iter().filter(|(_, c)| **c == 0).map(|(n, _)| *n).collect();
        let mut order = Vec::with_capacity(names.len());
        let mut level: BTreeMap<&str, usize> = BTreeMap::new();
        while let Some(n) = ready.pop_first() {
            pending.remove(n);
            let lv = deps[n]
                .iter()
                .map(|d| level.get(d.service.as_str()).map_or(0, |l| l + 1))
                .max()
                .unwrap_or(0);
            level.insert(n, lv);
            order.push(n.to_string());
            for m in &dependents[n] {
                if let Some(c) = pending.get_mut(m.as_str()) {
                    *c -= 1;
                    if *c == 0 {
                        ready.insert(m.as_str());
                    }
                }
            }
        }
        if !pending.is_empty() {
            let path = find_cycle(&deps, &pending.keys().copied().collect());
            let files = path
                .iter()
                .map(|n| self.services.get(n).map(|s| s.file.clone()).unwrap_or_default())
                .collect();
            return Err(GraphError::Cycle { path, files });
        }
        let mut levels: Vec<Vec<String>> = Vec::new();
        for n in &order {
            let lv = level[n.as_str()];
            if levels.len() <= lv {
                levels.resize(lv + 1, Vec::new());
            }
            levels[lv].push(n.clone());
        }
        levels.iter_mut().for_each(|l| l.sort());
        Ok(Graph {
            deps,
            dependents,
            order,
            levels,
        })
    }
}

/// Every node left after Kahn's algorithm has a dependency that is also
/// left, so walking the smallest such dependency must revisit a node.
fn find_cycle(deps: &BTreeMap<String, Vec<Dependency>>, left: &BTreeSet<&str>) -> Vec<String> {
    let Some(start) = left.first() else {
        return Vec::new();
    };
    let mut walk: Vec<&str> = vec![start];
    loop {
        let cur = walk[walk.len() - 1];
        let next = deps[cur].iter().map(|d| d.service.as_str()).find(|s| left.contains(s));
        let Some(next) = next else {
            return walk.iter().map(|s| s.to_string()).collect();
        };
        if let Some(pos) = walk.iter().position(|w| *w == next) {
            let mut cycle: Vec<String> = walk[pos..].iter().map(|s| s.to_string()).collect();
            cycle.push(next.to_string());
            return cycle;
        }
        walk.push(next);
    }
}

impl Graph {
    /// Services in a start order where every dependency comes first; ties
    /// are broken by name so the order is stable across runs and hosts.
    pub fn order(&self) -> &[String] {
        &self.order
    }

    /// Layers that can start in parallel: layer `i` only depends on layers
    /// before it. Each layer is sorted by name.
    pub fn levels(&self) -> &[Vec<String>] {
        &self.levels
    }

    /// Whether `name` is in the graph.
    pub fn contains(&self, name: &str) -> bool {
        self.deps.contains_key(name)
    }

    /// The services in the graph, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.deps.keys().map(String::as_str)
    }

    /// Direct dependencies of `name` inside the graph, with their conditions,
    /// sorted by target name.
    pub fn dependencies(&self, name: &str) -> &[Dependency] {
        self.deps.get(name).map_or(&[], Vec::as_slice)
    }

    /// Services that depend directly on `name`, sorted.
    pub fn dependents(&self, name: &str) -> Vec<&str> {
        self.dependents
            .get(name)
            .map(|s| s.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// Every service that cannot start while `name` is down: the transitive
    /// dependents through `required` edges (a `required: false` dependent
    /// starts anyway, as in Compose).
    pub fn blocked_by(&self, name: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut queue = VecDeque::from([name.to_string()]);
        while let Some(n) = queue.pop_front() {
            for d in self.dependents.get(&n).into_iter().flatten() {
                let required = self.dependencies(d).iter().any(|e| e.service == n && e.required);
                if required && out.insert(d.clone()) {
                    queue.push_back(d.clone());
                }
            }
        }
        out
    }

    /// The shortest chain of required edges from `failed` up to `dependent`
    /// (`[failed, a, dependent]`), to explain why `dependent` is blocked.
    pub fn blocking_chain(&self, failed: &str, dependent: &str) -> Option<Vec<String>> {
        let mut prev: BTreeMap<String, String> = BTreeMap::new();
        let mut queue = VecDeque::from([failed.to_string()]);
        while let Some(n) = queue.pop_front() {
            if n == dependent {
                let mut chain = vec![n.clone()];
                let mut cur = n;
                while let Some(p) = prev.get(&cur) {
                    chain.push(p.clone());
                    cur = p.clone();
                }
                chain.reverse();
                return Some(chain);
            }
            for d in self.dependents.get(&n).into_iter().flatten() {
                let required = self.dependencies(d).iter().any(|e| e.service == n && e.required);
                if required && d != failed && !prev.contains_key(d) {
                    prev.insert(d.clone(), n.clone());
                    queue.push_back(d.clone());
                }
            }
        }
        None
    }
}
