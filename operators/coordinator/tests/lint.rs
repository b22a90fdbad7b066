//! The repository's catalog (`compose/`) follows the practices the seeds
//! ask for: no error-level lint finding, with and without the local image
//! override; and the `Lint` answer filters and counts as documented.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use infra_compose::{LoadOptions, Severity, load_catalog};
use infra_coordinator::catalog::{lint_response, parse_min_severity};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn catalog(overrides: Vec<PathBuf>) -> infra_compose::Catalog {
    let opts = LoadOptions {
        env_file: Some(root().join("compose/.env.example")),
        env: Default::default(),
        overrides,
        secret_dirs: Vec::new(),
    };
    load_catalog(&root().join("compose"), &opts).unwrap_or_else(|e| panic!("{e}"))
}

fn assert_clean(cat: &infra_compose::Catalog) {
    let all = infra_compose::lint(cat);
    let errors: Vec<String> = all
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .map(ToString::to_string)
        .collect();
    assert!(
        errors.is_empty(),
        "{} error-level lint findings:\n{}\n(every finding: {})",
        errors.len(),
        errors.join("\n"),
        all.iter().map(|f| format!("\n  {f}")).collect::<String>()
    );
}

#[test]
fn the_repository_catalog_has_no_error_level_lint_finding() {
    assert_clean(&catalog(vec![]));
}

#[test]
fn the_repository_catalog_has_no_error_level_lint_finding_with_the_local_image_override() {
    assert_clean(&catalog(vec![root().join("e2e/images/local.override.yml")]));
}

#[test]
fn the_lint_answer_filters_by_severity_and_selection_and_counts_what_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("compose/04-data/db/docker-compose.yml");
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(
        &file,
        "services:\n  a:\n    image: nginx\n    ports: [\"8080:80\"]\n  b:\n    image: nginx:1.27\n",
    )
    .unwrap();
    let cat = load_catalog(&dir.path().join("compose"), &LoadOptions::default()).unwrap();

    let all = lint_response(&cat, None, parse_min_severity("").unwrap());
    let rules: Vec<(&str, &str, u32)> = all
        .findings
        .iter()
        .map(|f| (f.service.as_str(), f.rule.as_str(), f.line))
        .collect();
    assert_eq!(
        rules,
        vec![
            ("a", "no-resource-limits", 2),
            ("a", "unpinned-image", 3),
            ("a", "host-port", 4),
            ("b", "no-resource-limits", 5),
        ]
    );
    assert_eq!((all.errors, all.warnings), (2, 2));
    assert!(
        all.findings
            .iter()
            .all(|f| !f.why.is_empty() && f.file.ends_with("docker-compose.yml"))
    );

    let errors = lint_response(&cat, None, parse_min_severity("error").unwrap());
    assert_eq!((errors.findings.len(), errors.errors, errors.warnings), (2, 2, 0));

    let only_b: BTreeSet<String> = ["b".to_string()].into();
    let b = lint_response(&cat, Some(&only_b), Severity::Info);
    assert_eq!((b.findings.len(), b.errors, b.warnings), (1, 0, 1));

    let e = parse_min_severity("fatal").unwrap_err();
    assert_eq!(e.kind(), infra_coordinator::error::ErrorKind::Invalid);
    assert!(
        e.message().contains("min_severity") && e.message().contains("fatal"),
        "{}",
        e.message()
    );
}
