//! `sipedge migrate` as an operator runs it: the real binary converts real
//! Kamailio configurations (sipbench's, the active-active article's, the
//! registry one), and the real binary's `check-config` takes the result.
//! Kamailio itself (`kamailio -c`) vouches that the inputs are valid
//! Kamailio configurations.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use support::Scratch;

use sipedge::config::{self, Algorithm, ProbingMode, ReplyCode};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/kamailio")
        .join(rel)
}

fn sipedge(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sipedge"))
        .args(args)
        .output()
        .expect("run the sipedge binary")
}

/// Runs migrate (exit 0 expected), then check-config on its output (exit
/// 0 expected); returns the TOML, the warnings and the loaded config.
fn migrate_and_check(args: &[&str], out: &Path) -> (String, String, config::Config) {
    let mut all = vec!["migrate"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", out.to_str().unwrap()]);
    let run = sipedge(&all);
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert_eq!(run.status.code(), Some(0), "migrate {args:?}: {stderr}");
    assert!(
        stderr.contains("check-config accepts it"),
        "migrate says its output is not accepted: {stderr}"
    );
    let check = sipedge(&["check-config", out.to_str().unwrap()]);
    assert_eq!(
        check.status.code(),
        Some(0),
        "check-config refuses migrate's output: {}\n{}",
        String::from_utf8_lossy(&check.stderr),
        std::fs::read_to_string(out).unwrap()
    );
    let toml = std::fs::read_to_string(out).unwrap();
    let cfg = config::read_config(out).expect("the output loads");
    (toml, stderr, cfg)
}

/// `kamailio -c`: the fixture is a configuration Kamailio itself accepts.
fn kamailio_accepts(cfg: &Path) {
    let out = Command::new("/usr/sbin/kamailio")
        .args(["-c", "-f", cfg.to_str().unwrap()])
        .output()
        .expect("Debian's kamailio (/usr/sbin/kamailio)");
    assert!(
        out.status.success(),
        "kamailio -c refuses {}: {}",
        cfg.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn sipbench_config_converts_and_check_config_accepts_it() {
    let cfg = fixture("sipbench/kamailio.cfg");
    kamailio_accepts(&cfg);
    let dir = Scratch::new("sipbench");
    let out = dir.join("proxy.toml");
    // No --list: the cfg's own list_file (DS_LIST, "dispatcher.list" next
    // to it) is found and used.
    let (toml, stderr, c) = migrate_and_check(&[cfg.to_str().unwrap()], &out);
    assert!(toml.contains(
        "# from kamailio.cfg:79 modparam(\"dispatcher\", \"ds_ping_interval\", 2)\ninterval = \"2s\"\n"
    ), "{toml}");
    assert!(
        toml.contains(
            "# from kamailio.cfg:73 modparam(\"dispatcher\", \"list_file\", DS_LIST)\n\
         #   resolved: modparam(\"dispatcher\", \"list_file\", \"dispatcher.list\")\n"
        ),
        "{toml}"
    );
    assert_eq!(c.listen.udp, vec!["127.0.0.1:5060".parse().unwrap()]);
    assert_eq!(c.listen.tcp, vec!["127.0.0.1:5060".parse().unwrap()]);
    assert_eq!(c.listen.advertise.to_string(), "127.0.0.1");
    assert_eq!(c.dispatcher.set, 1);
    assert_eq!(c.dispatcher.algorithm, Algorithm::RoundRobin);
    let mut uris: Vec<String> = c
        .dispatcher
        .destinations
        .iter()
        .map(|d| d.uri.to_string())
        .collect();
    uris.sort();
    assert_eq!(uris, ["sip:127.0.0.1:5081", "sip:127.0.0.1:5082"]);
    assert_eq!(c.failover.fr_timeout.as_millis(), 2000);
    assert_eq!(c.failover.fr_inv_timeout.as_secs(), 30);
    // failure_route: t_check_status("5[0-9][0-9]") then ds_next_dst().
    assert_eq!(c.failover.codes, (500..=599).collect::<Vec<u16>>());
    assert_eq!(c.probe.interval.as_secs(), 2);
    assert_eq!(c.probe.mode, ProbingMode::All);
    assert_eq!(
        (c.probe.failure_threshold, c.probe.success_threshold),
        (2, 2)
    );
    assert_eq!(
        c.probe.reply_codes,
        [
            ReplyCode::Class(2),
            ReplyCode::Code(403),
            ReplyCode::Code(404),
            ReplyCode::Code(405),
            ReplyCode::Code(501)
        ]
    );
    assert_eq!(
        c.probe.ping_from.as_deref(),
        Some("sip:dispatcher@127.0.0.1")
    );
    // The command-line knobs (#!ifndef DS_LIST, #!ifdef MAXBUFFER) are
    // warned about, on stderr and in the file.
    for line in [27, 30, 46] {
        assert!(
            stderr.contains(&format!("warning: kamailio.cfg:{line}: #!if")),
            "{stderr}"
        );
        assert!(
            toml.contains(&format!("# WARNING kamailio.cfg:{line}: #!if")),
            "{toml}"
        );
    }
    // The routing script is listed by block, with its lines.
    for block in [
        "# kamailio.cfg:88-135 request_route",
        "# kamailio.cfg:188-208 failure_route[RTF_DISPATCH]",
        "#   ds_mark_dst (195): ",
    ] {
        assert!(toml.contains(block), "{block} missing:\n{toml}");
    }
    // Giving MAXBUFFER as Kamailio's -A would maps it.
    let out2 = dir.join("proxy-maxbuffer.toml");
    let (toml, _, c) = migrate_and_check(
        &[cfg.to_str().unwrap(), "--define", "MAXBUFFER=8388608"],
        &out2,
    );
    assert!(
        toml.contains("# from kamailio.cfg:47 maxbuffer=MAXBUFFER\n"),
        "{toml}"
    );
    assert_eq!(c.listen.recv_buffer, 8_388_608);
}

#[test]
fn active_active_article_config_converts_with_its_list() {
    let cfg = fixture("active_active/kamailio.cfg");
    kamailio_accepts(&cfg);
    let list = fixture("active_active/dispatcher.list");
    let dir = Scratch::new("article");
    let out = dir.join("proxy.toml");
    let (toml, stderr, c) = migrate_and_check(
        &[cfg.to_str().unwrap(), "--list", list.to_str().unwrap()],
        &out,
    );
    assert_eq!(c.listen.udp, vec!["0.0.0.0:5060".parse().unwrap()]);
    assert_eq!(c.listen.advertise.to_string(), "10.0.0.100:5060");
    assert_eq!(c.dispatcher.algorithm, Algorithm::Priority);
    assert_eq!(c.failover.codes, (500..=599).collect::<Vec<u16>>());
    let uris: Vec<String> = c
        .dispatcher
        .destinations
        .iter()
        .map(|d| d.uri.to_string())
        .collect();
    assert_eq!(uris, ["sip:10.0.1.10:5080", "sip:10.0.1.11:5080"]);
    assert_eq!(c.probe.mode, ProbingMode::All);
    assert_eq!(c.probe.interval.as_secs(), 10);
    assert_eq!(c.probe.failure_threshold, 3);
    assert_eq!(c.probe.ping_from.as_deref(), Some("sip:proxy@10.0.0.100"));
    assert_eq!(c.tcp.idle_timeout.as_secs(), 3605);
    let ctl = c
        .admin
        .as_ref()
        .expect("[admin] from the ctl module")
        .ctl
        .clone();
    assert_eq!(ctl.len(), 1, "{ctl:?}");
    assert!(toml.contains("# given with --list\n"), "{toml}");
    // The Redis registry logic is not guessed: each redis_cmd is named by
    // line, and the module's warning says what sipedge has instead.
    for line in [106, 127, 136] {
        assert!(
            stderr.contains(&format!("warning: kamailio.cfg:{line}: redis_cmd(...)")),
            "{stderr}"
        );
    }
    assert!(
        stderr.contains("module ndb_redis: not mapped; a Redis call registry"),
        "{stderr}"
    );
    // Its Redis server is offered as the registry, commented out: whether
    // the script stores the article's keys is routing logic.
    assert!(
        toml.contains("\n[dialogs]\n# from kamailio.cfg:64 modparam(\"ndb_redis\", \"server\""),
        "{toml}"
    );
    assert!(
        toml.contains("\n# registry = \"redis://127.0.0.1:6379/0\"\n"),
        "{toml}"
    );
    assert_eq!(c.dialogs.registry, None);
    // The #!else branch (htable) is not read.
    assert!(!toml.contains("htable\", \"htable"), "{toml}");
    // The article's WITH_REDIS is defined in the file: no warning.
    assert!(!stderr.contains("WITH_REDIS"), "{stderr}");
}

#[test]
fn without_list_the_cfgs_missing_list_file_is_written_as_is_and_named() {
    let cfg = fixture("active_active/kamailio.cfg");
    let dir = Scratch::new("article-nolist");
    let out = dir.join("proxy.toml");
    let run = sipedge(&[
        "migrate",
        cfg.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("list_file /etc/kamailio/dispatcher.list: cannot read it"),
        "{stderr}"
    );
    assert!(
        stderr.contains("check-config does not accept it yet"),
        "{stderr}"
    );
    let toml = std::fs::read_to_string(&out).unwrap();
    assert!(
        toml.contains("list_file = \"/etc/kamailio/dispatcher.list\"\n"),
        "{toml}"
    );
}

#[test]
fn registry_fixture_converts_and_its_script_is_listed() {
    // registry.cfg has @...@ placeholders tests/registry.rs fills in; the
    // same here, with a list beside it.
    let dir = Scratch::new("registry");
    let list = dir.join("dispatcher.list");
    std::fs::write(
        &list,
        "1 sip:127.0.0.1:15081 0 10\n1 sip:127.0.0.1:15082 0 5\n",
    )
    .unwrap();
    let text = std::fs::read_to_string(fixture("registry.cfg"))
        .unwrap()
        .replace("@SIP_PORT@", "15060")
        .replace("@MODULES@", "/usr/lib/x86_64-linux-gnu/kamailio/modules")
        .replace("@LIST_FILE@", list.to_str().unwrap())
        .replace("@REDIS_PORT@", "16379");
    let cfg = dir.join("kamailio.cfg");
    std::fs::write(&cfg, text).unwrap();
    let out = dir.join("proxy.toml");
    let (toml, stderr, c) = migrate_and_check(&[cfg.to_str().unwrap()], &out);
    assert_eq!(c.dispatcher.algorithm, Algorithm::Priority);
    // ds_probing_mode 0 is kept: Kamailio's meaning, not sipedge's default.
    assert_eq!(c.probe.mode, ProbingMode::UntilReachable);
    assert_eq!(c.dispatcher.destinations.len(), 2);
    assert!(stderr.contains("never calls ds_next_dst"), "{stderr}");
    assert!(stderr.contains("no ds_ping_interval"), "{stderr}");
    assert!(
        toml.contains("# WARNING kamailio.cfg:65: redis_cmd(...)"),
        "{toml}"
    );
}

#[test]
fn stdout_without_output_file() {
    let cfg = fixture("sipbench/kamailio.cfg");
    let run = sipedge(&["migrate", cfg.to_str().unwrap()]);
    assert_eq!(run.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        stdout.starts_with("# proxy.toml written by `sipedge migrate`"),
        "{stdout}"
    );
    assert!(stdout.contains("\n[probe]\n"));
    // Warnings are on stderr only.
    assert!(!stdout.contains("\nwarning:"));
    assert!(String::from_utf8_lossy(&run.stderr).contains("warning: kamailio.cfg:27:"));
}

#[test]
fn exit_2_names_the_file_and_the_reason() {
    let dir = Scratch::new("exit2");
    let cfg = fixture("sipbench/kamailio.cfg");
    let cases: Vec<(Vec<String>, String, &str)> = vec![
        (
            vec!["migrate".into(), dir.join("nope.cfg").display().to_string()],
            dir.join("nope.cfg").display().to_string(),
            "cannot read it",
        ),
        (
            vec![
                "migrate".into(),
                cfg.display().to_string(),
                "-o".into(),
                dir.join("no/such/dir/proxy.toml").display().to_string(),
            ],
            dir.join("no/such/dir/proxy.toml").display().to_string(),
            "cannot write it",
        ),
        (
            vec![
                "migrate".into(),
                cfg.display().to_string(),
                "--list".into(),
                dir.join("missing.list").display().to_string(),
            ],
            dir.join("missing.list").display().to_string(),
            "cannot read it",
        ),
    ];
    let bad_list = dir.join("bad.list");
    std::fs::write(&bad_list, "1 sip:127.0.0.1:5081\nnot a line\n").unwrap();
    let mut cases = cases;
    cases.push((
        vec![
            "migrate".into(),
            cfg.display().to_string(),
            "--list".into(),
            bad_list.display().to_string(),
        ],
        bad_list.display().to_string(),
        "line 2",
    ));
    for (args, file, reason) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = sipedge(&args);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&file) && stderr.contains(reason),
            "{args:?}: {stderr}"
        );
    }
}
