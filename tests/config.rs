//! Every shipped and fixture config: the example and `good/` load, each
//! `bad/` file is refused with an error naming file, key and reason, and
//! the binary maps that to exit codes 0 and 2.

use std::path::{Path, PathBuf};
use std::process::Command;

use sipedge::config::{self, ConfigError};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures(kind: &str) -> PathBuf {
    root().join("tests/fixtures/config").join(kind)
}

fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

/// Each bad fixture: the key the error must name and a fragment of the
/// reason it must give.
const BAD: &[(&str, &str, &str)] = &[
    (
        "capture-hep.toml",
        "capture.hep",
        "\"sctp:10.0.0.9:9060\" is not a HEP collector; write \"udp:HOST:PORT\" or \"tcp:HOST:PORT\"",
    ),
    ("capture-what.toml", "capture.what", "unknown variant `errors`"),
    (
        "capture-empty-key.toml",
        "capture.auth_key",
        "an empty HEP password",
    ),
    (
        "admin-empty.toml",
        "admin",
        "[admin] has neither listen nor ctl",
    ),
    (
        "ctl-unknown-kind.toml",
        "admin.ctl",
        "\"fifo:/tmp/kamailio_fifo\": expected unix:PATH, tcp:ADDR[:PORT] or udp:ADDR[:PORT]",
    ),
    (
        "ctl-relative-path.toml",
        "admin.ctl",
        "a unix socket needs an absolute path",
    ),
    (
        "ctl-public-tcp.toml",
        "admin.ctl",
        "tcp:0.0.0.0:2049 is not a loopback address and BINRPC has no authentication",
    ),
    (
        "ctl-mode.toml",
        "admin.ctl_mode",
        "\"0888\": expected permissions in octal",
    ),
    (
        "ctl-unknown-user.toml",
        "admin.ctl_user",
        "no user named \"no-such-user-sipedge\" on this host",
    ),
    (
        "ctl-twice.toml",
        "admin.ctl",
        "tcp:127.0.0.1:2049 is listed twice",
    ),
    (
        "list-bad-line.toml",
        "dispatcher.list_file",
        "bad-line.list:3: set id",
    ),
    (
        "list-hostname.toml",
        "dispatcher.list_file",
        "hostname.list:2: sip:fs-b.pool.example:5080: its host name does not resolve",
    ),
    (
        "list-duplicate.toml",
        "dispatcher.list_file",
        "duplicate.list:5: sip:callee@10.0.1.10:5080 is listed twice in the set that takes calls (same host and port as line 2)",
    ),
    (
        "list-weight-missing.toml",
        "dispatcher.list_file",
        "no-weight.list:2: algorithm \"weight\" needs a weight",
    ),
    (
        "list-no-such-set.toml",
        "dispatcher.list_file",
        "no destination in set 7 (dispatcher.set); the file has sets [1, 2]",
    ),
    (
        "list-and-destinations.toml",
        "dispatcher.list_file",
        "both list_file and [[dispatcher.destination]] are given",
    ),
    (
        "list-missing-file.toml",
        "dispatcher.list_file",
        "no-such.list: cannot read it",
    ),
    (
        "advertise-wildcard.toml",
        "listen.advertise",
        "T.38 re-INVITE would be black-holed",
    ),
    (
        "advertise-ipv6-wildcard.toml",
        "listen.advertise",
        "wildcard address",
    ),
    (
        "advertise-loopback.toml",
        "listen.advertise",
        "loopback is only accepted when every destination is loopback",
    ),
    (
        "no-destination.toml",
        "dispatcher.destination",
        "no destination",
    ),
    (
        "destination-not-sip.toml",
        "dispatcher.destination[1].uri",
        "not a sip: URI",
    ),
    (
        "destination-bad-port.toml",
        "dispatcher.destination[0].uri",
        "not a number from 1 to 65535",
    ),
    (
        "destination-duplicate.toml",
        "dispatcher.destination[1].uri",
        "listed twice",
    ),
    (
        "weight-missing.toml",
        "dispatcher.destination[1].weight",
        "needs a weight",
    ),
    (
        "unknown-algorithm.toml",
        "dispatcher.algorithm",
        "unknown variant `random`",
    ),
    (
        "unknown-key.toml",
        "failover.fr_timer",
        "unknown field `fr_timer`",
    ),
    (
        "metrics-kamailio-names-not-bool.toml",
        "metrics.kamailio_names",
        "invalid type: string \"yes\", expected a boolean",
    ),
    (
        "failover-code.toml",
        "failover.codes[1]",
        "180 is not a final response code",
    ),
    ("duration-no-unit.toml", "failover.fr_timeout", "no unit"),
    (
        "duration-unquoted.toml",
        "failover.fr_inv_timeout",
        "must be quoted",
    ),
    ("duration-zero.toml", "dialogs.ttl", "longer than 0"),
    (
        "duration-absurd.toml",
        "failover.fr_timeout",
        "is out of range; use 100ms to 600s",
    ),
    (
        "dialogs-ttl-1ms.toml",
        "dialogs.ttl",
        "1ms is out of range; use 60s to 168h",
    ),
    (
        "count-absurd.toml",
        "tcp.max_connections",
        "4000000000 is out of range; use 1 to 1000000",
    ),
    (
        "tcp-reserved-over-cap.toml",
        "tcp.reserved_trusted",
        "200 is more than max_connections (100)",
    ),
    (
        "destination-self.toml",
        "dispatcher.destination[1].uri",
        "sip:203.0.113.5 is sipedge's own address",
    ),
    (
        "list-dev-zero.toml",
        "dispatcher.list_file",
        "/dev/zero: cannot read it: not a regular file",
    ),
    ("udp-empty.toml", "listen.udp", "no UDP socket"),
    (
        "udp-not-socket.toml",
        "listen.udp[0]",
        "invalid socket address",
    ),
    ("listen-missing.toml", "listen", "missing field `listen`"),
    (
        "cluster-secret-and-file.toml",
        "cluster.secret_file",
        "both secret and secret_file are given",
    ),
    (
        "cluster-secret-short.toml",
        "cluster.secret",
        "7 bytes is too short to be a secret; use at least 16",
    ),
    (
        "cluster-secret-file-missing.toml",
        "cluster.secret_file",
        "no-such.secret: No such file",
    ),
    (
        "cluster-secret-file-empty.toml",
        "cluster.secret_file",
        "empty.secret: 0 bytes is too short to be a secret",
    ),
    (
        "cluster-previous-without-secret.toml",
        "cluster.previous_secret",
        "give secret or secret_file too",
    ),
    (
        "registry-url.toml",
        "dialogs.registry",
        "\"http://10.0.0.9:6379/0\" is not a Redis URL",
    ),
];

#[test]
fn example_config_is_valid() {
    let path = root().join("proxy.toml.example");
    let from_file = config::read_config(&path).unwrap_or_else(|e| panic!("{e}"));
    // The binary embeds the same file as its default.
    let built_in = config::from_toml(config::EXAMPLE_TOML, config::EXAMPLE_NAME).unwrap();
    assert_eq!(from_file, built_in);
    assert_eq!(from_file.dispatcher.destinations.len(), 2);
}

#[test]
fn good_fixtures_are_valid() {
    let files = toml_files(&fixtures("good"));
    assert!(!files.is_empty());
    for path in files {
        if let Err(err) = config::read_config(&path) {
            panic!("{err}");
        }
    }
}

#[test]
fn bad_fixtures_name_file_key_and_reason() {
    let files = toml_files(&fixtures("bad"));
    // A fixture without an expectation (or the reverse) is a test bug.
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let mut expected: Vec<String> = BAD.iter().map(|(name, ..)| name.to_string()).collect();
    expected.sort();
    assert_eq!(names, expected);

    for &(name, key, reason) in BAD {
        let path = fixtures("bad").join(name);
        let err = match config::read_config(&path) {
            Ok(config) => panic!("{name} accepted: {config:?}"),
            Err(err) => err,
        };
        assert_eq!(err.key(), Some(key), "{name}: {err}");
        let message = err.to_string();
        assert!(
            message.starts_with(&path.display().to_string()),
            "{name}: file not named: {message}"
        );
        assert!(
            message.contains(&format!(": {key}: ")),
            "{name}: key not named: {message}"
        );
        assert!(
            message.contains(reason),
            "{name}: reason {reason:?} missing: {message}"
        );
    }
}

#[test]
fn unreadable_file_is_named() {
    let path = fixtures("no-such-file.toml");
    let err = config::read_config(&path).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(err.to_string().contains("no-such-file.toml"), "{err}");
}

fn sipedge(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sipedge"))
        .args(args)
        .output()
        .expect("run the sipedge binary")
}

#[test]
fn check_config_exit_codes() {
    let good = root().join("proxy.toml.example");
    let good = good.to_str().unwrap();
    let out = sipedge(&["check-config", good]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("ok: {good}")
    );

    let bad = fixtures("bad").join("advertise-wildcard.toml");
    let bad = bad.to_str().unwrap();
    let out = sipedge(&["check-config", bad]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(bad), "{stderr}");
    assert!(stderr.contains("listen.advertise"), "{stderr}");
}

#[test]
fn bad_config_in_run_mode_exits_2() {
    let bad = fixtures("bad").join("no-destination.toml");
    let out = sipedge(&["--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("dispatcher.destination"));
}

/// The built binary on port 0: prints where it listens, answers an OPTIONS
/// keep-alive over real UDP, and exits 0 on SIGTERM.
#[test]
fn binary_serves_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::net::UdpSocket;
    use std::process::Stdio;
    use std::time::Duration;

    let dir = std::env::temp_dir().join(format!("sipedge-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("proxy.toml");
    std::fs::write(
        &cfg,
        "[listen]\nudp = [\"127.0.0.1:0\"]\nadvertise = \"127.0.0.1\"\n\
         [[dispatcher.destination]]\nuri = \"sip:127.0.0.1:9\"\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sipedge"))
        .args(["--config", cfg.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("listening on udp:").map(str::to_owned))
        .expect("a listening line");
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();

    let trunk = UdpSocket::bind("127.0.0.1:0").unwrap();
    trunk
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let me = trunk.local_addr().unwrap();
    let options = format!(
        "OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKbin1;rport\r\n\
         From: <sip:trunk@{me}>;tag=1\r\nTo: <sip:127.0.0.1:{port}>\r\nCall-ID: bin-1\r\n\
         CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    trunk.send_to(options.as_bytes(), &addr).unwrap();
    let mut buf = [0u8; 2048];
    let n = trunk.recv(&mut buf).expect("an answer to OPTIONS");
    assert!(
        buf[..n].starts_with(b"SIP/2.0 200 "),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A Kamailio dispatcher.list is read as-is: the configured set, in
/// Kamailio's order (priority, then later lines first), with its flags
/// (initial state), weights and ping_from; other sets are not routed to.
#[test]
fn dispatcher_list_file_becomes_the_pool() {
    let path = fixtures("good").join("dispatcher-list.toml");
    let cfg = config::read_config(&path).unwrap_or_else(|e| panic!("{e}"));
    let d = &cfg.dispatcher.destinations;
    let uris: Vec<String> = d.iter().map(|x| x.uri.to_string()).collect();
    assert_eq!(
        uris,
        [
            "sip:10.0.1.12:5080",
            "sip:10.0.1.11:5080",
            "sip:10.0.1.10:5080"
        ]
    );
    assert_eq!(d[0].priority, 20);
    assert_eq!(d[1].list_flags, 12, "disabled + probing, as written");
    assert_eq!(d[2].list_flags, 8);
    assert_eq!(
        (d[1].weight, d[2].weight, d[0].weight),
        (Some(40), Some(60), None)
    );
    assert_eq!(d[2].ping_from.as_deref(), Some("sip:health@10.0.0.5"));
    // Algorithms 10 and 11 read these attrs.
    assert_eq!((d[1].rweight, d[1].maxload), (Some(30), Some(20)));
    assert!(d[1].congestion_control, "cc=1");
    assert_eq!((d[2].rweight, d[2].maxload), (None, None));
    assert!(!d[2].congestion_control);
    assert!(cfg.dispatcher.loaded_from_list);
    // Set 2 is kept (listed, probed), not routed to.
    let others = &cfg.dispatcher.other_sets;
    assert_eq!(others.len(), 1);
    assert_eq!(others[0].0, 2);
    assert_eq!(others[0].1[0].uri.to_string(), "sip:10.0.2.20:5060");
    assert!(cfg.dispatcher.skipped.is_empty());
}

/// The dispatcher.list example from Kamailio's documentation loads: set 1
/// is routed, set 2 (with its TCP line) is kept for listing and probing.
#[test]
fn kamailio_documentation_list_loads() {
    let dir = std::env::temp_dir().join(format!("sipedge-kdoc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let list = root().join("tests/fixtures/dispatcher/kamailio-doc.list");
    let cfg_path = dir.join("kdoc.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "[listen]\nadvertise = \"127.0.0.1\"\n[dispatcher]\nlist_file = \"{}\"\n",
            list.display()
        ),
    )
    .unwrap();
    let cfg = config::read_config(&cfg_path).unwrap_or_else(|e| panic!("{e}"));
    let uris: Vec<String> = cfg
        .dispatcher
        .destinations
        .iter()
        .map(|d| d.uri.to_string())
        .collect();
    // Priority 5 first, then the priority-0 lines in reverse file order.
    assert_eq!(
        uris,
        [
            "sip:127.0.0.1:7072",
            "sip:127.0.0.1:7074",
            "sip:127.0.0.1:7070"
        ]
    );
    let set2 = &cfg.dispatcher.other_sets;
    assert_eq!(set2.len(), 1);
    let set2: Vec<String> = set2[0].1.iter().map(|d| d.uri.to_string()).collect();
    assert_eq!(
        set2,
        ["sip:127.0.0.1:5080;transport=tcp", "sip:127.0.0.1:5082"]
    );
    assert!(
        cfg.dispatcher.skipped.is_empty(),
        "{:?}",
        cfg.dispatcher.skipped
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A list file is read only up to [`config::MAX_FILE_SIZE`], and only
/// when it is a regular file: a directory, or a file over the cap, is
/// refused with the key and the reason (never read whole).
#[test]
fn list_files_are_read_with_a_size_cap() {
    let dir = std::env::temp_dir().join(format!("sipedge-biglist-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let big = dir.join("big.list");
    let line = "1 sip:10.0.1.10:5080 0 0\n";
    let lines = (config::MAX_FILE_SIZE as usize) / line.len() + 1;
    std::fs::write(&big, line.repeat(lines)).unwrap();
    for (list, reason) in [
        (
            big.display().to_string(),
            "cannot read it: larger than 4 MiB",
        ),
        (
            dir.display().to_string(),
            "cannot read it: not a regular file",
        ),
    ] {
        let cfg = dir.join("proxy.toml");
        std::fs::write(
            &cfg,
            format!("[listen]\nadvertise = \"10.0.0.5\"\n[dispatcher]\nlist_file = \"{list}\"\n"),
        )
        .unwrap();
        let err = config::read_config(&cfg).unwrap_err();
        assert_eq!(err.key(), Some("dispatcher.list_file"), "{err}");
        assert!(err.to_string().contains(reason), "{err}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Every key of the range tables is one the config has: a typo there
/// would leave that key unchecked.
#[test]
fn range_tables_name_real_keys() {
    let example = std::fs::read_to_string(root().join("proxy.toml.example")).unwrap();
    for key in config::DURATION_RANGES
        .iter()
        .map(|(k, ..)| *k)
        .chain(config::COUNT_RANGES.iter().map(|(k, ..)| *k))
    {
        let field = key.rsplit('.').next().unwrap();
        assert!(
            example.contains(&format!("{field} =")),
            "{key} is not shown in proxy.toml.example"
        );
    }
}

/// A certificate and key made for this test (rcgen), written as PEM into
/// `dir`: `(chain.pem, key.pem)`.
fn tls_identity(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let made = rcgen::generate_simple_self_signed(vec!["sip.test".into()]).unwrap();
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

/// `[tls]`: the certificate and key (and the client CAs and CRLs of
/// mutual TLS) are read at start; each way they can be unusable is
/// refused naming the file, the key and the reason.
#[test]
fn tls_identity_is_checked_at_start() {
    let dir = std::env::temp_dir().join(format!("sipedge-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = tls_identity(&dir, "a");
    let (_, other_key) = tls_identity(&dir, "b");
    let not_pem = dir.join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let config_with = |listen: &str, tls: &str| {
        let cfg = dir.join("proxy.toml");
        std::fs::write(
            &cfg,
            format!(
                "[listen]\nadvertise = \"127.0.0.1\"\nudp = [\"127.0.0.1:0\"]\n{listen}\n\
                 [[dispatcher.destination]]\nuri = \"sip:127.0.0.1:5080\"\n{tls}"
            ),
        )
        .unwrap();
        config::read_config(&cfg)
    };
    let tls = |c: &Path, k: &Path| {
        format!(
            "[tls]\ncertificate = \"{}\"\nkey = \"{}\"\n",
            c.display(),
            k.display()
        )
    };

    let good = config_with("tls = [\"127.0.0.1:0\"]", &tls(&cert, &key)).unwrap();
    assert_eq!(good.listen.tls, vec!["127.0.0.1:0".parse().unwrap()]);
    let t = good.tls.as_ref().unwrap();
    assert!(t.server.is_some());
    assert_eq!(t.handshake_timeout, std::time::Duration::from_secs(5));
    let summary = good.to_string();
    assert!(
        summary.contains(&format!(
            "listen tls      127.0.0.1:0 (certificate {}, TLS 1.2+, no client certificates, \
             handshake_timeout 5s, max_handshakes_per_source 8)",
            cert.display()
        )),
        "{summary}"
    );
    // Relative paths are the config file's directory's.
    let relative = tls(Path::new("a.pem"), Path::new("a.key"));
    assert!(config_with("", &relative)
        .unwrap()
        .tls
        .unwrap()
        .server
        .is_some());

    // Mutual TLS: a CA bundle and its CRL.
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let (ca_file, crl_file) = (dir.join("ca.pem"), dir.join("crl.pem"));
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let crl = rcgen::CertificateRevocationListParams {
        this_update: rcgen::date_time_ymd(2024, 1, 1),
        next_update: rcgen::date_time_ymd(2100, 1, 1),
        crl_number: rcgen::SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: Vec::new(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    }
    .signed_by(&ca)
    .unwrap();
    std::fs::write(&crl_file, crl.pem().unwrap()).unwrap();
    let mutual = |ca: &Path, crl: Option<&Path>| {
        tls(&cert, &key)
            + &format!("client_ca = \"{}\"\n", ca.display())
            + &crl.map_or(String::new(), |c| format!("crl = \"{}\"\n", c.display()))
    };
    let good = config_with(
        "tls = [\"127.0.0.1:0\"]",
        &(mutual(&ca_file, Some(&crl_file)) + "max_handshakes_per_source = 2\n"),
    )
    .unwrap();
    let t = good.tls.as_ref().unwrap();
    assert!(t.server.as_ref().unwrap().0.mutual);
    assert_eq!(t.max_handshakes_per_source, 2);
    let summary = good.to_string();
    assert!(
        summary.contains(&format!(
            "mutual TLS, client_ca {}, crl {}, handshake_timeout 5s, max_handshakes_per_source 2)",
            ca_file.display(),
            crl_file.display()
        )),
        "{summary}"
    );
    let bad_crl = dir.join("bad-crl.pem");
    std::fs::write(
        &bad_crl,
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    )
    .unwrap();

    let missing = dir.join("no-such.pem");
    for (tls, key_name, reason) in [
        (
            mutual(&missing, None),
            "tls.client_ca",
            "no-such.pem: No such file",
        ),
        (
            mutual(&not_pem, None),
            "tls.client_ca",
            "not.pem: no \"BEGIN CERTIFICATE\" block",
        ),
        (
            tls(&cert, &key) + &format!("crl = \"{}\"\n", crl_file.display()),
            "tls.crl",
            "only asked for with [tls] client_ca",
        ),
        (
            mutual(&ca_file, Some(&not_pem)),
            "tls.crl",
            "not.pem: no \"BEGIN X509 CRL\" block",
        ),
        (
            mutual(&ca_file, Some(&bad_crl)),
            "tls.crl",
            "bad-crl.pem: not a usable CRL",
        ),
        (
            tls(&cert, &key) + "max_handshakes_per_source = 0\n",
            "tls.max_handshakes_per_source",
            "0 is out of range; use 1 to",
        ),
        (
            String::new(),
            "listen.tls",
            "TLS listeners need a certificate",
        ),
        (
            tls(&missing, &key),
            "tls.certificate",
            "no-such.pem: No such file",
        ),
        (tls(&cert, &missing), "tls.key", "no-such.pem: No such file"),
        (tls(&dir, &key), "tls.certificate", "not a regular file"),
        (
            tls(&not_pem, &key),
            "tls.certificate",
            "not.pem: no \"BEGIN CERTIFICATE\" block",
        ),
        (
            tls(&cert, &not_pem),
            "tls.key",
            "not.pem: no PEM private key",
        ),
        // A certificate where the key goes, and the other way round.
        (tls(&cert, &cert), "tls.key", "no PEM private key"),
        (
            tls(&key, &key),
            "tls.certificate",
            "no \"BEGIN CERTIFICATE\"",
        ),
        (
            tls(&cert, &other_key),
            "tls.key",
            "b.key: does not match the certificate",
        ),
        (
            tls(&cert, &key) + "handshake_timeout = \"0s\"\n",
            "tls.handshake_timeout",
            "longer than 0",
        ),
    ] {
        let err = config_with("tls = [\"127.0.0.1:0\"]", &tls).unwrap_err();
        assert_eq!(err.key(), Some(key_name), "{err}");
        let text = err.to_string();
        assert!(text.contains("proxy.toml"), "{text}");
        assert!(text.contains(reason), "{reason:?} not in {text}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Outbound TLS: `[tls] ca_list` and the client certificate are read at
/// start and refused naming the file, the key and the reason; the
/// per-destination keys are checked; the summary says what is trusted.
#[test]
fn outbound_tls_is_checked_at_start() {
    let dir = std::env::temp_dir().join(format!("sipedge-tls-out-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = tls_identity(&dir, "a");
    let (client, _) = tls_identity(&dir, "c");
    let (ca, _) = tls_identity(&dir, "ca");
    let not_pem = dir.join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let config_with = |listen: &str, dest: &str, tls: &str| {
        let cfg = dir.join("proxy.toml");
        std::fs::write(
            &cfg,
            format!(
                "[listen]\nadvertise = \"127.0.0.1\"\nudp = [\"127.0.0.1:0\"]\n{listen}\n\
                 [[dispatcher.destination]]\n{dest}\n\
                 [tls]\ncertificate = \"{}\"\nkey = \"{}\"\n{tls}",
                cert.display(),
                key.display()
            ),
        )
        .unwrap();
        config::read_config(&cfg)
    };
    let listen = "tls = [\"127.0.0.1:0\"]";
    let over_tls = "uri = \"sip:127.0.0.1:5081;transport=tls\"\ntls_server_name = \"fs1.test\"";
    let ca_list = format!("ca_list = \"{}\"\n", ca.display());

    let good = config_with(listen, over_tls, &ca_list).unwrap();
    let d = &good.dispatcher.destinations[0];
    assert_eq!(d.tls_server_name.as_deref(), Some("fs1.test"));
    assert!(d.tls_verify);
    assert!(good.tls.as_ref().unwrap().client.is_some());
    let summary = good.to_string();
    assert!(
        summary.contains(&format!(
            "outbound tls    trusts CAs {}, client certificate {}, 1 destinations over TLS\n",
            ca.display(),
            cert.display()
        )),
        "{summary}"
    );
    let sips = config_with(listen, "uri = \"sips:127.0.0.1\"\ntls_verify = false", "").unwrap();
    let uri = &sips.dispatcher.destinations[0].uri;
    assert_eq!(
        (uri.port_or_default(), uri.to_string().as_str()),
        (5061, "sips:127.0.0.1")
    );
    let summary = sips.to_string();
    assert!(
        summary.contains("trusts the system CA store")
            && summary.contains("(1 with tls_verify = false: NOT CHECKED)"),
        "{summary}"
    );

    let missing = dir.join("no-such.pem");
    let with_client = |c: &Path, k: &Path| {
        format!(
            "{ca_list}client_certificate = \"{}\"\nclient_key = \"{}\"\n",
            c.display(),
            k.display()
        )
    };
    for (listen, dest, tls, key_name, reason) in [
        (
            listen,
            over_tls,
            format!("ca_list = \"{}\"\n", missing.display()),
            "tls.ca_list",
            "no-such.pem: No such file",
        ),
        (
            listen,
            over_tls,
            format!("ca_list = \"{}\"\n", not_pem.display()),
            "tls.ca_list",
            "not.pem: no \"BEGIN CERTIFICATE\" block",
        ),
        (
            listen,
            over_tls,
            with_client(&missing, &key),
            "tls.client_certificate",
            "No such file",
        ),
        (
            listen,
            over_tls,
            with_client(&client, &key),
            "tls.client_key",
            "a.key: does not match the client certificate",
        ),
        (
            listen,
            over_tls,
            with_client(&client, &not_pem),
            "tls.client_key",
            "not a PEM private key",
        ),
        (
            "",
            over_tls,
            ca_list.clone(),
            "dispatcher.destination[0].uri",
            "listens on no TLS address",
        ),
        (
            listen,
            "uri = \"sip:127.0.0.1:5080\"\ntls_server_name = \"fs1.test\"",
            ca_list.clone(),
            "dispatcher.destination[0].tls_server_name",
            "is not reached over TLS",
        ),
        (
            listen,
            "uri = \"sip:127.0.0.1:5080\"\ntls_verify = false",
            ca_list.clone(),
            "dispatcher.destination[0].tls_verify",
            "is not reached over TLS",
        ),
        (
            listen,
            "uri = \"sips:127.0.0.1\"\ntls_server_name = \"not a name\"",
            ca_list.clone(),
            "dispatcher.destination[0].tls_server_name",
            "is not a DNS name",
        ),
        (
            listen,
            "uri = \"sips:127.0.0.1;transport=udp\"",
            ca_list.clone(),
            "dispatcher.destination[0].uri",
            "sips: URI is over TLS",
        ),
    ] {
        let err = config_with(listen, dest, &tls).unwrap_err();
        assert_eq!(err.key(), Some(key_name), "{err}");
        let text = err.to_string();
        assert!(text.contains(reason), "{reason:?} not in {text}");
    }

    // dispatcher.list: sips: and transport=tls lines, sipedge's TLS attrs.
    let list = dir.join("dispatcher.list");
    let with_list = |lines: &str| {
        std::fs::write(&list, lines).unwrap();
        let cfg = dir.join("proxy.toml");
        std::fs::write(
            &cfg,
            format!(
                "[listen]\nadvertise = \"127.0.0.1\"\nudp = [\"127.0.0.1:0\"]\n{listen}\n\
                 [dispatcher]\nlist_file = \"dispatcher.list\"\n\
                 [tls]\ncertificate = \"{}\"\nkey = \"{}\"\n{ca_list}",
                cert.display(),
                key.display()
            ),
        )
        .unwrap();
        config::read_config(&cfg)
    };
    let cfg = with_list(
        "1 sips:127.0.0.1:5071 0 0 tls_verify=0\n\
         1 sip:127.0.0.1:5072;transport=tls 0 0 tls_server_name=fs2.test\n",
    )
    .unwrap();
    let by_port = |p: u16| {
        cfg.dispatcher
            .destinations
            .iter()
            .find(|d| d.uri.port == Some(p))
            .unwrap()
    };
    let (a, b) = (by_port(5071), by_port(5072));
    assert_eq!(a.uri.transport, Some(sipedge::transport::Transport::Tls));
    assert!(!a.tls_verify && b.tls_verify);
    assert_eq!(b.uri.transport, Some(sipedge::transport::Transport::Tls));
    assert_eq!(b.tls_server_name.as_deref(), Some("fs2.test"));
    let err = with_list("1 sips:127.0.0.1:5071 0 0 tls_verify=yes\n").unwrap_err();
    assert!(
        err.to_string().contains("tls_verify=yes: give 0 or 1"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
