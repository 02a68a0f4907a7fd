//! A fake DNS server for the resolution tests: a plain UDP socket on
//! 127.0.0.1 port 0 answering queries, encoded and decoded with
//! hickory-proto, from a small table of records. It logs every query it
//! receives, so a test can tell what was asked (and that a cached name was
//! not asked again).
//!
//! Answers, as an authoritative server gives them:
//! - the records of the asked name and type (every one, in table order; no
//!   additional section, so the resolver has to look the SRV targets up
//!   itself);
//! - none with NOERROR (NODATA) when the name has records of other types
//!   only;
//! - NXDOMAIN when the table has nothing for the name.
//!
//! The negative answers carry a SOA of the name's top-level domain in the
//! authority section (minimum [`TTL`]), as a real server's do.
#![allow(dead_code)] // each test file uses a part of it

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// The TTL of every record served (and the negative-caching minimum).
pub const TTL: u32 = 60;

/// A name as the log and the table key it: lower case, no trailing dot.
fn key(name: &Name) -> String {
    name.to_lowercase()
        .to_ascii()
        .trim_end_matches('.')
        .to_owned()
}

fn name(s: &str) -> Name {
    let fqdn = if s.ends_with('.') {
        s.to_owned()
    } else {
        format!("{s}.")
    };
    Name::from_ascii(&fqdn).unwrap_or_else(|e| panic!("bad DNS name {s:?}: {e}"))
}

/// The records a [`FakeDns`] serves. Names are given with or without the
/// trailing dot.
#[derive(Debug, Clone, Default)]
pub struct Zone {
    records: Vec<Record>,
}

impl Zone {
    pub fn new() -> Zone {
        Zone::default()
    }

    /// `name. SRV priority weight port target.`
    pub fn srv(mut self, owner: &str, priority: u16, weight: u16, port: u16, target: &str) -> Zone {
        let rdata = RData::SRV(SRV::new(priority, weight, port, name(target)));
        self.records
            .push(Record::from_rdata(name(owner), TTL, rdata));
        self
    }

    /// `name. A ip`.
    pub fn a(mut self, owner: &str, ip: Ipv4Addr) -> Zone {
        self.records
            .push(Record::from_rdata(name(owner), TTL, RData::A(A(ip))));
        self
    }

    /// `name. AAAA ip`.
    pub fn aaaa(mut self, owner: &str, ip: Ipv6Addr) -> Zone {
        self.records
            .push(Record::from_rdata(name(owner), TTL, RData::AAAA(AAAA(ip))));
        self
    }

    /// The response to one query (`id`, the question echoed as asked).
    fn answer(&self, query: &Message) -> Message {
        let mut resp = Message::new();
        resp.set_id(query.id())
            .set_message_type(MessageType::Response)
            .set_op_code(query.op_code())
            .set_authoritative(true)
            .set_recursion_desired(query.recursion_desired())
            .set_recursion_available(true);
        let Some(q) = query.query() else {
            resp.set_response_code(ResponseCode::FormErr);
            return resp;
        };
        resp.add_query(q.clone());
        let asked = key(q.name());
        let of_name: Vec<&Record> = self
            .records
            .iter()
            .filter(|r| key(r.name()) == asked)
            .collect();
        let answers: Vec<Record> = of_name
            .iter()
            .filter(|r| q.query_type() == RecordType::ANY || r.record_type() == q.query_type())
            .map(|r| (*r).clone())
            .collect();
        if answers.is_empty() {
            resp.set_response_code(if of_name.is_empty() {
                ResponseCode::NXDomain
            } else {
                ResponseCode::NoError
            });
            let tld = q.name().trim_to(1);
            let soa = SOA::new(
                name(&format!("ns.{}", key(&tld))),
                name(&format!("hostmaster.{}", key(&tld))),
                1,
                3600,
                600,
                86_400,
                TTL,
            );
            resp.add_name_server(Record::from_rdata(tld, TTL, RData::SOA(soa)));
        } else {
            resp.set_response_code(ResponseCode::NoError);
            resp.add_answers(answers);
        }
        resp
    }
}

/// One query as received: the name (lower case, no trailing dot) and type.
pub type Asked = (String, RecordType);

/// The running server; dropping it stops it.
pub struct FakeDns {
    /// Where it listens (127.0.0.1, port 0).
    pub addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    log: Arc<Mutex<Vec<Asked>>>,
    task: JoinHandle<()>,
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeDns {
    /// Binds 127.0.0.1:0 and serves `zone`. Call inside a tokio runtime.
    pub async fn start(zone: Zone) -> FakeDns {
        let sock = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind the fake DNS server");
        let addr = sock.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(zone));
        let log = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(serve(sock, zone.clone(), log.clone()));
        FakeDns {
            addr,
            zone,
            log,
            task,
        }
    }

    /// Serves `zone` from now on, instead of the table given so far (for
    /// records naming ports only known once the harness runs, which itself
    /// needs this server's address).
    pub fn set_zone(&self, zone: Zone) {
        *self.zone.lock().unwrap() = zone;
    }

    /// The config section pointing sipedge at this server (leaked: the
    /// harness takes `&'static str`; one small string per test).
    pub fn toml(&self) -> &'static str {
        Box::leak(format!("\n[dns]\nservers = [\"{}\"]\n", self.addr).into_boxed_str())
    }

    /// Every query received so far, in order.
    pub fn queries(&self) -> Vec<Asked> {
        self.log.lock().unwrap().clone()
    }

    /// How many `rtype` queries for `name` (any case, trailing dot or not)
    /// were received.
    pub fn count(&self, name: &str, rtype: RecordType) -> usize {
        let want = name.trim_end_matches('.').to_ascii_lowercase();
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, t)| *n == want && *t == rtype)
            .count()
    }

    /// How many `rtype` queries were received, any name.
    pub fn count_type(&self, rtype: RecordType) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, t)| *t == rtype)
            .count()
    }
}

async fn serve(sock: UdpSocket, zone: Arc<Mutex<Zone>>, log: Arc<Mutex<Vec<Asked>>>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            // An ICMP error from an earlier answer's destination: go on.
            continue;
        };
        let Ok(query) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if query.message_type() != MessageType::Query {
            continue;
        }
        if let Some(q) = query.query() {
            log.lock().unwrap().push((key(q.name()), q.query_type()));
        }
        let resp = zone.lock().unwrap().answer(&query);
        if let Ok(bytes) = resp.to_vec() {
            let _ = sock.send_to(&bytes, from).await;
        }
    }
}

/// Asks `server` one question over UDP the way a stub resolver does (for
/// the server's self-test); the response, bounded by `wait`.
pub async fn ask(
    server: SocketAddr,
    qname: &str,
    rtype: RecordType,
    wait: std::time::Duration,
) -> Message {
    use hickory_proto::op::Query;
    let sock = UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind a DNS client");
    let mut msg = Message::new();
    let id = 0x5eed;
    msg.set_id(id)
        .set_message_type(MessageType::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(name(qname), rtype));
    sock.send_to(&msg.to_vec().expect("encode a query"), server)
        .await
        .expect("send a DNS query");
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(wait, sock.recv_from(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("no DNS answer for {qname} {rtype} within {wait:?}"))
        .expect("recv a DNS answer");
    let resp = Message::from_vec(&buf[..n]).expect("decode a DNS answer");
    assert_eq!(resp.id(), id, "the answer echoes the query's id");
    resp
}
