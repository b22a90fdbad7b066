//! The development secrets `e2e/images/make-dev-secrets.sh` writes have the
//! formats their services need (the suite runs it before the tests).

use std::process::Command;

#[test]
fn harbors_registry_htpasswd_is_a_bcrypt_line_that_verifies_against_its_password() {
    let dir = infra_e2e::repo_root().join("compose/secrets");
    let line = std::fs::read_to_string(dir.join("harbor_registry_htpasswd")).expect("run make-dev-secrets.sh");
    let line = line.trim();
    let (user, hash) = line.split_once(':').expect("user:hash");
    assert_eq!(user, "harbor_registry_user");
    assert!(
        hash.starts_with("$2y$") || hash.starts_with("$2b$"),
        "a bcrypt hash, not a placeholder"
    );
    let password = std::fs::read_to_string(dir.join("harbor_registry_password")).unwrap();
    // htpasswd -v: does the file's hash match this password?
    let ok = Command::new("htpasswd")
        .args(["-vb"])
        .arg(dir.join("harbor_registry_htpasswd"))
        .arg(user)
        .arg(password.trim_end_matches('\n'))
        .output()
        .expect("htpasswd (apache2-utils; e2e/local/install-tools.sh installs it)");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let wrong = Command::new("htpasswd")
        .args(["-vb"])
        .arg(dir.join("harbor_registry_htpasswd"))
        .arg(user)
        .arg("not-the-password")
        .output()
        .unwrap();
    assert!(!wrong.status.success(), "a wrong password must not verify");
}
