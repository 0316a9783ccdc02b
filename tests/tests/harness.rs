//! The broker and database harnesses the fleet tests stand on: a real RabbitMQ and a real
//! PostgreSQL start, answer, survive what the tests do to them, and leave nothing behind.
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use ids_tests::broker::Broker;
use ids_tests::postgres::Postgres;
use ids_tests::service_process::{port_is_free, processes_with_env};

/// Publishes `count` persistent messages to durable queue `queue` over the TLS listener, logged in
/// by certificate (EXTERNAL) as `user`, with publisher confirms: the way a foreign (DIDS-style)
/// sensor would. pika is the client python3-pika installs for the system python.
fn publish_over_tls_as(broker: &Broker, user: &str, queue: &str, count: u32) -> Result<(), String> {
    let (cert, key) = broker.client_cert(user);
    let script = format!(
        r#"
import ssl, pika
context = ssl.create_default_context(cafile={ca:?})
context.load_cert_chain({cert:?}, {key:?})
parameters = pika.ConnectionParameters(host="127.0.0.1", port={port}, virtual_host="/",
    ssl_options=pika.SSLOptions(context, "localhost"), credentials=pika.credentials.ExternalCredentials())
connection = pika.BlockingConnection(parameters)
channel = connection.channel()
channel.confirm_delivery()
channel.queue_declare(queue={queue:?}, durable=True)
for i in range({count}):
    channel.basic_publish("", {queue:?}, b"event %d" % i, pika.BasicProperties(delivery_mode=2), mandatory=True)
connection.close()
"#,
        ca = broker.ca_pem_path().display().to_string(),
        cert = cert.display().to_string(),
        key = key.display().to_string(),
        port = broker.tls_port(),
    );
    let out = Command::new("/usr/bin/python3").arg("-c").arg(script).output().map_err(|e| e.to_string())?;
    if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
}

/// Sends the AMQP 0-9-1 header and reads the broker's first frame: a method frame on channel 0
/// carrying Connection.Start (class 10, method 10).
fn answers_connection_start(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else { return false };
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut head = [0u8; 11];
    stream.write_all(b"AMQP\x00\x00\x09\x01").is_ok()
        && stream.read_exact(&mut head).is_ok()
        && head[0] == 1
        && head[1..3] == [0, 0]
        && head[7..11] == [0, 10, 0, 10]
}

/// Addresses of the TCP sockets listening on `port` (from /proc/net/tcp and tcp6), as hex
/// "ADDRESS:PORT" entries the kernel prints.
fn listening_addresses(port: u16) -> Vec<String> {
    let wanted = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .flat_map(|table| {
            std::fs::read_to_string(table).unwrap_or_default().lines().skip(1).map(str::to_string).collect::<Vec<_>>()
        })
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // State 0A is LISTEN.
            (fields.get(3) == Some(&"0A") && fields[1].ends_with(&wanted)).then(|| fields[1].to_string())
        })
        .collect()
}

/// 127.0.0.1 or ::1 as /proc/net/tcp{,6} print them (hex, in the kernel's byte order).
fn is_loopback(address: &str) -> bool {
    address.starts_with("0100007F:") || address.starts_with("00000000000000000000000001000000:")
}

fn processes_matching(pattern: &str) -> String {
    let out = Command::new("pgrep").arg("-a").arg("-f").arg(pattern).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn authenticates(broker: &Broker, user: &str, password: &str) -> bool {
    broker.ctl_output(&["authenticate_user", user, password]).status.success()
}

#[test]
fn broker_serves_users_survives_kill9_and_leaves_nothing_behind() {
    let started = Instant::now();
    let mut broker = Broker::start("harness", &["sensor-a", "collector"]);
    eprintln!("broker start: {:?}", started.elapsed());

    assert!(answers_connection_start(broker.port()), "no Connection.Start on the AMQP port");
    assert!(broker.url("collector").starts_with("amqp://collector:"));
    assert!(broker.url("collector").ends_with(&format!("@127.0.0.1:{}/%2f", broker.port())));
    assert_eq!(broker.tls_url(), format!("amqps://127.0.0.1:{}/%2f", broker.tls_port()));
    for user in ["sensor-a", "collector"] {
        assert!(authenticates(&broker, user, broker.password(user)), "{user} cannot log in with its password");
    }
    assert!(!authenticates(&broker, "collector", "wrong"), "a wrong password must be refused");
    assert!(!authenticates(&broker, "guest", "guest"), "only the given users may exist");

    // Every port of the node (AMQP, AMQPS, distribution, epmd) listens on loopback only (epmd adds ::1 by itself).
    let (amqp, tls, dist, epmd) = (broker.port(), broker.tls_port(), broker.dist_port(), broker.epmd_port());
    let beam = broker.beam_pid().expect("beam.smp runs");
    for port in [amqp, tls, dist, epmd] {
        let addresses = listening_addresses(port);
        assert!(!addresses.is_empty(), "nothing listens on port {port}");
        assert!(addresses.iter().all(|a| is_loopback(a)), "port {port} listens beyond 127.0.0.1: {addresses:?}");
    }

    // A certificate for a known user logs in by EXTERNAL over TLS and its messages land.
    publish_over_tls_as(&broker, "sensor-a", "harness-events", 3).unwrap_or_else(|e| panic!("EXTERNAL over TLS: {e}"));
    assert_eq!(broker.queue_messages("harness-events"), Some(3));
    assert_eq!(broker.queue_messages("no-such-queue"), None);
    // A certificate whose common name is no user is refused.
    assert!(publish_over_tls_as(&broker, "stranger", "harness-events", 1).is_err(), "an unknown CN must be refused");

    broker.kill9();
    assert!(!std::path::Path::new(&format!("/proc/{beam}")).exists(), "beam.smp {beam} survived kill9");
    assert!(!answers_connection_start(amqp), "the broker still answers after kill9");
    assert_eq!(processes_matching(broker.node()), "", "processes of the node survived kill9");
    let restarted = Instant::now();
    broker.restart();
    eprintln!("broker restart after kill9: {:?}", restarted.elapsed());
    assert_eq!((broker.port(), broker.tls_port()), (amqp, tls));
    assert!(answers_connection_start(amqp));
    assert!(authenticates(&broker, "sensor-a", broker.password("sensor-a")), "users are gone after the restart");
    assert_eq!(broker.queue_messages("harness-events"), Some(3), "confirmed persistent messages lost by kill9");

    let (node, dir) = (broker.node().to_string(), broker.dir().to_path_buf());
    let stopping = Instant::now();
    broker.stop();
    eprintln!("broker stop: {:?}", stopping.elapsed());
    assert_eq!(processes_matching(&node), "", "processes of node {node} remain");
    assert!(processes_with_env(&format!("ERL_EPMD_PORT={epmd}")).is_empty(), "the node's epmd remains");
    for port in [amqp, tls, dist, epmd] {
        assert!(port_is_free(port), "port {port} still taken after stop");
    }
    assert!(!dir.exists(), "{} remains", dir.display());
}

#[test]
fn postgres_answers_queries_and_frees_its_port() {
    let started = Instant::now();
    let postgres = Postgres::start("harness");
    eprintln!("postgres start: {:?}", started.elapsed());
    let port = postgres.port();
    assert_eq!(postgres.url(), format!("postgres://postgres@127.0.0.1:{port}/ids"));
    assert_eq!(postgres.psql("select 1"), "1\n");
    postgres.psql("create table alerts (id bigint primary key, kind text not null)");
    postgres.psql("insert into alerts values (1, 'ssh-brute-force'), (2, 'port-scan')");
    assert_eq!(postgres.psql("select kind from alerts order by id"), "ssh-brute-force\nport-scan\n");
    let addresses = listening_addresses(port);
    assert!(!addresses.is_empty() && addresses.iter().all(|a| is_loopback(a)), "{addresses:?}");

    let dir = postgres.dir().to_path_buf();
    drop(postgres);
    assert!(port_is_free(port), "port {port} still taken after drop");
    assert_eq!(processes_matching(&dir.display().to_string()), "", "postgres processes remain");
    assert!(!dir.exists(), "{} remains", dir.display());
}
