//! The `shadowmesh-xds` binary itself: help, configuration checking, and errors that name
//! the field. (Serving real Envoy from a configuration file is in
//! `tests/tests/xds_envoy.rs`.)

use std::process::Command;

fn xds(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_shadowmesh-xds"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn help_documents_every_option() {
    let out = xds(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for option in [
        "--config",
        "--http-listen",
        "--ads-listen",
        "--group-by",
        "--check",
    ] {
        assert!(help.contains(option), "{option} missing from --help");
    }
    assert!(help.contains("not Envoy's request mirroring"));
}

#[test]
fn a_bad_configuration_is_refused_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("shadowmesh-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "[[services]]\nname = \"checkout\"\nprimary = [{ address = \"10.0.0.1:80\", weight = 0 }]\n",
    )
    .unwrap();
    let out = xds(&["--check", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("services[0].primary[0].weight"), "{err}");

    std::fs::write(
        &path,
        "grouping = \"id\"\n[[services]]\nname = \"checkout\"\nprimary = []\n",
    )
    .unwrap();
    let out = xds(&[
        "--check",
        "--config",
        path.to_str().unwrap(),
        "--ads-listen",
        "127.0.0.1:7000",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ok = String::from_utf8(out.stdout).unwrap();
    assert!(
        ok.contains("ads 127.0.0.1:7000") && ok.contains("Id") && ok.contains("1 service"),
        "{ok}"
    );

    let out = xds(&["--check", "--group-by", "metadata:"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("metadata:KEY")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_empty_tokens_file_is_refused_rather_than_opening_the_api() {
    let dir = std::env::temp_dir().join(format!("shadowmesh-cli-tokens-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, "# mounted empty\n\n").unwrap();
    let out = xds(&[
        "--check",
        "--http-listen",
        "127.0.0.1:7001",
        "--tokens-file",
        tokens.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("holds no tokens"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A scratch directory for one test.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("shadowmesh-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn every_number_is_bounded_at_check_and_nothing_panics_later() {
    let dir = scratch("bounds");
    let path = dir.join("x.toml");
    for (text, field) in [
        (
            "[http]\nmax_connections = 9223372036854775807\n",
            "http.max_connections",
        ),
        (
            "[ads]\nmax_connections = 9223372036854775807\n",
            "ads.max_connections",
        ),
        ("[relay]\nmax_bytes = 0\n", "relay.max_bytes"),
        (
            "[telemetry]\nmax_skew_ms = 18446744073709551615\n",
            "telemetry.max_skew_ms",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        let out = xds(&["--check", "--config", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}: --check passed");
        assert!(err.contains(&format!("field `{field}`")), "{text}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn broken_tls_files_fail_check_naming_the_field() {
    let dir = scratch("tls");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, "this is not a certificate\n").unwrap();
    std::fs::write(&key, "garbage").unwrap();
    let path = dir.join("x.toml");
    std::fs::write(
        &path,
        format!(
            "[ads_tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    )
    .unwrap();
    let out = xds(&["--check", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success(), "garbage PEM passed --check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ads_tls.cert_file"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_listener_that_cannot_bind_is_named() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = xds(&["--http-listen", &addr, "--ads-listen", "127.0.0.1:0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("http_listen {addr}")) && err.contains("in use"),
        "{err}"
    );
}
