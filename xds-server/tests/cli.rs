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
