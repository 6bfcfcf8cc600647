//! The command line: bad flags end with a clear message and a non-zero exit, never a panic and
//! never a half-written manifest; `--output` writes what stdout would show.

use super::generate;

#[test]
fn bad_flags_fail_clearly() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--max-body-bytes", "0"],
            "--max-body-bytes 0: must be between 1",
        ),
        (&["--max-body-bytes", "-5"], "--max-body-bytes"),
        (&["--max-body-bytes", "lots"], "--max-body-bytes"),
        (
            &["--path-regex", "/a/("],
            "--path-regex \"/a/(\": not a valid regex",
        ),
        (&["--path-regex", "/a(?=b)"], "--path-regex"),
        (
            &["--path-regex", "(?x)/a b"],
            "Envoy's RE2 does not support it",
        ),
        (
            &["--path-exact", "api"],
            "--path-exact \"api\": must start with '/'",
        ),
        (&["--path-prefix", "/a?b"], "--path-prefix"),
        (&["--method", "GE T"], "--method"),
        (&["--skip-header", ":path"], "--skip-header \":path\""),
        (&["--skip-header", "bad header"], "--skip-header"),
        (
            &["--selector", "noequals"],
            "--selector \"noequals\": expected KEY=VALUE",
        ),
        (
            &["--selector", "app=a", "--selector", "app=b"],
            "given more than once",
        ),
        (&["--namespace", "Bad"], "--namespace \"Bad\""),
        (&["--name", "a_b"], "--name \"a_b\""),
        (&["--direction", "sideways"], "--direction"),
        (
            &["--output", "/nonexistent-meshtap-dir/f.yaml"],
            "cannot write",
        ),
    ];
    for (args, expected) in cases {
        let (ok, stdout, stderr) = generate(args);
        assert!(!ok, "{args:?} succeeded");
        assert!(stdout.is_empty(), "{args:?} printed {stdout}");
        assert!(
            stderr.contains(expected),
            "{args:?}: stderr {stderr:?} lacks {expected:?}"
        );
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    }
}

#[test]
fn output_file_holds_what_stdout_shows() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("filter.yaml");
    let args = ["--selector", "app=reviews", "--path-prefix", "/api/"];
    let (ok, stdout, stderr) = generate(&args);
    assert!(ok, "{stderr}");
    let mut with_output = args.to_vec();
    let file_arg = file.to_string_lossy().into_owned();
    with_output.extend(["--output", &file_arg]);
    let (ok, nothing, stderr) = generate(&with_output);
    assert!(ok, "{stderr}");
    assert!(nothing.is_empty());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), stdout);
}
