//! The `shoal cert` contract, through the real binary: files, permissions, exit codes, and one
//! clear stderr line per error.

use std::path::Path;
use std::process::{Command, Output};

fn shoal(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(args)
        .output()
        .expect("run shoal")
}

fn stderr_line(output: &Output) -> String {
    let text = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(text.lines().count(), 1, "one line on stderr: {text:?}");
    assert!(text.starts_with("shoal: "), "{text:?}");
    text
}

fn path(dir: &Path) -> &str {
    dir.to_str().unwrap()
}

#[test]
fn init_node_and_client_succeed_with_private_keys_0600() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("certs");
    let dir = path(&dir);
    for args in [
        vec!["cert", "init", "--dir", dir],
        vec!["cert", "node", "--dir", dir, "--node-id", "node-1.eu_west"],
        vec!["cert", "client", "--dir", dir, "--name", "app"],
    ] {
        let out = shoal(&args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
    }
    for (file, mode) in [
        ("ca.pem", 0o644),
        ("ca.key", 0o600),
        ("node-node-1.eu_west.pem", 0o644),
        ("node-node-1.eu_west.key", 0o600),
        ("client-app.pem", 0o644),
        ("client-app.key", 0o600),
    ] {
        let meta = std::fs::metadata(Path::new(dir).join(file)).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(meta.permissions().mode() & 0o777, mode, "{file}");
        }
        #[cfg(not(unix))]
        let _ = (meta, mode);
    }
    // The files load as TLS material that names the right identities.
    let id = shoal_node::NodeId::new("node-1.eu_west").unwrap();
    let node = shoal_node::tls::TlsMaterial::load_node(Path::new(dir), &id).unwrap();
    assert_eq!(node.node_id(), Some(&id));
    let name = shoal_node::ClientName::new("app").unwrap();
    shoal_node::tls::TlsMaterial::load_client(Path::new(dir), &name).unwrap();
}

#[test]
fn bad_input_exits_2_with_one_line_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = path(tmp.path());

    let out = shoal(&["cert", "node", "--dir", dir, "--node-id", "n1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_line(&out).contains("no cluster CA"));
    assert_eq!(std::fs::read_dir(dir).unwrap().count(), 0);

    assert_eq!(
        shoal(&["cert", "init", "--dir", dir]).status.code(),
        Some(0)
    );
    let ca_before = std::fs::read(tmp.path().join("ca.pem")).unwrap();
    let out = shoal(&["cert", "init", "--dir", dir]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_line(&out).contains("already exists"));
    assert_eq!(std::fs::read(tmp.path().join("ca.pem")).unwrap(), ca_before);

    let too_long = "x".repeat(65);
    for bad in ["", "a b", "a/b", "../x", too_long.as_str()] {
        let out = shoal(&["cert", "node", "--dir", dir, "--node-id", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(stderr_line(&out).contains("node id"), "{bad:?}");
        let out = shoal(&["cert", "client", "--dir", dir, "--name", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(stderr_line(&out).contains("client name"), "{bad:?}");
    }
    assert_eq!(std::fs::read_dir(dir).unwrap().count(), 2, "only the CA");

    // Usage errors (clap) also exit 2.
    assert_eq!(
        shoal(&["cert", "node", "--dir", dir]).status.code(),
        Some(2)
    );
    assert_eq!(shoal(&["no-such-command"]).status.code(), Some(2));
    assert_eq!(shoal(&["--help"]).status.code(), Some(0));
}
