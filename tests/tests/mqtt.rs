//! End-to-end over MQTT with clients no one here wrote: `mosquitto_sub` (Debian
//! `mosquitto-clients`) and paho-mqtt (Debian `python3-paho-mqtt`) against the real
//! `herald serve --mqtt 127.0.0.1:0`, pushes sent through the admin API. `.ci/run` installs both;
//! where they are missing each test says so and skips.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{Context, anyhow};
use herald_tests::{DEADLINE, Serve};
use serde_json::json;

/// The paho client the tests drive: connects, subscribes to the given topics at QoS 1 in
/// on_connect, prints `connack <code>`, `suback <codes>`, `msg <topic> <qos> <dup> <payload>`,
/// and exits after `count` messages (acknowledged: the PUBACK is written before it disconnects).
const PAHO: &str = r#"
import sys, time
import paho.mqtt.client as mqtt
host, port, user, password, client_id, version, clean, count = sys.argv[1:9]
topics = sys.argv[9:]
count = int(count)
def out(*a):
    print(*a, flush=True)
if version == "5":
    c = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv5)
else:
    c = mqtt.Client(client_id=client_id, clean_session=(clean == "1"), protocol=mqtt.MQTTv311)
c.username_pw_set(user, password)
state = {"n": 0, "done": False}
def code(x):
    return x.value if hasattr(x, "value") else x
def on_connect(c, u, flags, rc, props=None):
    out("connack", code(rc))
    if code(rc) != 0:
        state["done"] = True
    elif topics:
        c.subscribe([(t, 1) for t in topics])
def on_subscribe(c, u, mid, granted, props=None):
    out("suback", " ".join(str(code(g)) for g in granted))
    if count == 0:
        state["done"] = True
def on_message(c, u, m):
    out("msg", m.topic, m.qos, int(m.dup), m.payload.decode())
    state["n"] += 1
    if state["n"] >= count:
        state["done"] = True
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect(host, int(port), keepalive=30)
deadline = time.time() + 20
while time.time() < deadline and not state["done"]:
    c.loop(timeout=0.1)
c.loop(timeout=0.1)
c.disconnect()
out("bye")
"#;

/// A paho client that publishes: connects with a will on `will_topic`, publishes `hello from
/// <user>` at QoS 1 on `topic`, prints `puback` once acknowledged, then exits without
/// DISCONNECT (so the server publishes its will).
const PAHO_PUBLISHER: &str = r#"
import os, sys, time
import paho.mqtt.client as mqtt
host, port, user, password, client_id, version, topic, will_topic = sys.argv[1:9]
def out(*a):
    print(*a, flush=True)
c = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv5 if version == "5" else mqtt.MQTTv311)
c.username_pw_set(user, password)
c.will_set(will_topic, "%s went away" % user, qos=1)
state = {"acked": False}
def on_connect(c, u, flags, rc, props=None):
    out("connack", rc.value if hasattr(rc, "value") else rc)
    c.publish(topic, "hello from %s" % user, qos=1)
def on_publish(c, u, mid):
    out("puback")
    state["acked"] = True
c.on_connect, c.on_publish = on_connect, on_publish
c.connect(host, int(port), keepalive=30)
deadline = time.time() + 20
while time.time() < deadline and not state["acked"]:
    c.loop(timeout=0.1)
out("vanishing")
os._exit(0)
"#;

/// A client process whose stdout lines are read with deadlines.
struct Client {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Client {
    fn spawn(cmd: &mut Command) -> anyhow::Result<Client> {
        let mut child =
            cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().context("spawning client")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Client { child, lines: rx, seen: Vec::new() })
    }

    /// The next line containing `needle`.
    fn wait(&mut self, needle: &str) -> anyhow::Result<String> {
        let end = Instant::now() + DEADLINE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .map_err(|_| anyhow!("client never printed {needle:?}; it printed {:?}", self.seen))?;
            self.seen.push(line.clone());
            if line.contains(needle) {
                return Ok(line);
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn installed(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A python3 that can import paho (a pyenv shim may shadow Debian's).
fn paho_python() -> Option<&'static str> {
    ["python3", "/usr/bin/python3"].into_iter().find(|p| installed(p, &["-c", "import paho.mqtt.client"]))
}

fn have_mosquitto() -> bool {
    let found =
        |c: &str| Command::new(c).arg("--help").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok();
    let ok = found("mosquitto_sub") && found("stdbuf");
    if !ok {
        eprintln!("SKIPPED: mosquitto_sub is not installed (apt-get install mosquitto-clients)");
    }
    ok
}

fn have_paho() -> Option<&'static str> {
    let p = paho_python();
    if p.is_none() {
        eprintln!("SKIPPED: python3 paho-mqtt is not installed (apt-get install python3-paho-mqtt)");
    }
    p
}

struct Mqtt {
    h: Serve,
    host: String,
    port: String,
}

fn serve() -> anyhow::Result<Mqtt> {
    serve_with(&[])
}

fn serve_with(extra: &[&str]) -> anyhow::Result<Mqtt> {
    let mut args = vec!["--mqtt", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut h = Serve::start_with(&args)?;
    let addr = h.proc.wait_addr("herald: mqtt on ")?;
    Ok(Mqtt { h, host: addr.ip().to_string(), port: addr.port().to_string() })
}

impl Mqtt {
    /// `mosquitto_sub -d` (line-buffered: its stdio would hold lines in a pipe) subscribed to
    /// `topic` at QoS 1 until `count` messages or 30 s.
    fn mosquitto_sub(
        &self,
        version: &str,
        user: &str,
        device: &str,
        password: &str,
        topic: &str,
        count: usize,
    ) -> anyhow::Result<Client> {
        let count = count.to_string();
        Client::spawn(Command::new("stdbuf").args([
            "-oL",
            "mosquitto_sub",
            "-d",
            "-h",
            &self.host,
            "-p",
            &self.port,
            "-V",
            version,
            "-i",
            device,
            "-u",
            user,
            "-P",
            password,
            "-t",
            topic,
            "-q",
            "1",
            "-C",
            &count,
            "-W",
            "30",
        ]))
    }

    #[allow(clippy::too_many_arguments)]
    fn paho(
        &self,
        py: &str,
        user: &str,
        password: &str,
        client_id: &str,
        version: &str,
        clean: bool,
        count: usize,
        topics: &[&str],
    ) -> anyhow::Result<Client> {
        let count = count.to_string();
        let mut args = vec![
            "-c",
            PAHO,
            &self.host,
            &self.port,
            user,
            password,
            client_id,
            version,
            if clean { "1" } else { "0" },
        ];
        args.push(&count);
        args.extend_from_slice(topics);
        Client::spawn(Command::new(py).args(&args))
    }
}

#[test]
fn mosquitto_sub_with_a_herald_credential_receives_a_push() -> anyhow::Result<()> {
    if !have_mosquitto() {
        return Ok(());
    }
    let m = serve()?;
    let a = &m.h.admin;
    a.set_topics("ms", &["news"]);
    let token = a.token("ms", "laptop");
    let sub = |version: &str, password: &str| m.mosquitto_sub(version, "ms", "laptop", password, "news", 1);
    for version in ["mqttv311", "mqttv5"] {
        let mut c = sub(version, &token)?;
        c.wait("SUBACK")?;
        let id = a.push(
            json!({"to": {"topic": "news"}, "payload": {"body": format!("hello {version}")}, "ttl_secs": 60}),
        );
        c.wait(&format!("hello {version}"))?;
        a.wait_status(id, "delivered", |s| s["delivered"] == 1);
    }
    // A wrong password is refused.
    let out = Command::new("mosquitto_sub")
        .args([
            "-h", &m.host, "-p", &m.port, "-i", "laptop", "-u", "ms", "-P", "wrong", "-t", "news", "-C", "1",
            "-W", "20",
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stderr).to_lowercase()
        + &String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(!out.status.success() && text.contains("bad user name or password"), "{text}");
    Ok(())
}

#[test]
fn paho_publishes_and_its_will_reach_mosquitto_sub() -> anyhow::Result<()> {
    let Some(py) = have_paho() else { return Ok(()) };
    if !have_mosquitto() {
        return Ok(());
    }
    let m = serve_with(&["--mqtt-allow-publish"])?;
    let a = &m.h.admin;
    for u in ["watcher", "pub3", "pub5"] {
        a.set_groups(u, &["fleet"]);
    }
    let token = a.token("watcher", "w");
    let mut sub = m.mosquitto_sub("mqttv5", "watcher", "w", &token, "groups/fleet", 4)?;
    sub.wait("SUBACK")?;
    for (user, version) in [("pub3", "3"), ("pub5", "5")] {
        let token = a.token(user, "d");
        let mut p = Client::spawn(Command::new(py).args([
            "-c",
            PAHO_PUBLISHER,
            &m.host,
            &m.port,
            user,
            &token,
            "d",
            version,
            "groups/fleet",
            "groups/fleet",
        ]))?;
        assert_eq!(p.wait("connack")?, "connack 0");
        // PUBACK only once the push is durable; the watcher gets it as a group push.
        p.wait("puback")?;
        sub.wait(&format!("hello from {user}"))?;
        // The publisher vanished without DISCONNECT: its will is pushed to the group.
        p.wait("vanishing")?;
        sub.wait(&format!("{user} went away"))?;
    }
    Ok(())
}

#[test]
fn paho_qos1_receives_acks_and_the_push_is_delivered() -> anyhow::Result<()> {
    let Some(py) = have_paho() else { return Ok(()) };
    let m = serve()?;
    let a = &m.h.admin;
    a.set_groups("pa", &["team"]);
    for (version, device) in [("3", "p3"), ("5", "p5")] {
        let token = a.token("pa", device);
        let mut c = m.paho(py, "pa", &token, device, version, true, 2, &["groups/team", "users/pa"])?;
        assert_eq!(c.wait("connack")?, "connack 0");
        assert_eq!(c.wait("suback")?, "suback 1 1");
        let group =
            a.push(json!({"to": {"group": "team"}, "payload": {"body": "to the team"}, "ttl_secs": 60}));
        assert_eq!(c.wait("msg")?, "msg groups/team 1 0 to the team");
        a.push(json!({"to": {"user": "pa"}, "payload": {"data": {"k": "v"}}, "ttl_secs": 0}));
        assert_eq!(c.wait("msg")?, r#"msg users/pa 0 0 {"k":"v"}"#);
        c.wait("bye")?;
        // Both devices acknowledge the group push in turn.
        a.wait_status(group, "delivered", |s| s["delivered"].as_u64() >= Some(1));
    }
    Ok(())
}

#[test]
fn paho_wrong_password_and_forbidden_topic_get_the_right_codes() -> anyhow::Result<()> {
    let Some(py) = have_paho() else { return Ok(()) };
    let m = serve()?;
    let a = &m.h.admin;
    a.set_topics("pf", &["news"]);
    for (version, bad_password, forbidden) in
        [("3", "connack 4", "suback 1 128"), ("5", "connack 134", "suback 1 135")]
    {
        let mut c = m.paho(py, "pf", "not-a-token", "dev", version, true, 0, &["news"])?;
        assert_eq!(c.wait("connack")?, bad_password, "v{version} wrong password");
        let token = a.token("pf", "dev");
        let mut c = m.paho(py, "pf", &token, "dev", version, true, 0, &["news", "secret"])?;
        assert_eq!(c.wait("connack")?, "connack 0");
        assert_eq!(c.wait("suback")?, forbidden, "v{version} forbidden topic");
        // A credential of another user is a bad user name or password too.
        let other = a.token("someone", "dev");
        let mut c = m.paho(py, "pf", &other, "dev", version, true, 0, &["news"])?;
        assert_eq!(c.wait("connack")?, bad_password, "v{version} other user's credential");
    }
    Ok(())
}

#[test]
fn paho_persistent_session_receives_missed_qos1_messages_on_reconnect() -> anyhow::Result<()> {
    let Some(py) = have_paho() else { return Ok(()) };
    let m = serve()?;
    let a = &m.h.admin;
    a.set_topics("pp", &["news"]);
    let token = a.token("pp", "dev");
    let mut c = m.paho(py, "pp", &token, "dev", "3", false, 1, &["news"])?;
    c.wait("suback")?;
    let first = a.push(json!({"to": {"topic": "news"}, "payload": {"body": "one"}, "ttl_secs": 300}));
    assert_eq!(c.wait("msg")?, "msg news 1 0 one");
    c.wait("bye")?;
    a.wait_status(first, "delivered", |s| s["delivered"] == 1);
    // Missed while away: pushed once the control plane knows the device left (pushed before
    // that, it would be sent to the gateway and come back as a redelivery, DUP set).
    let end = std::time::Instant::now() + herald_tests::DEADLINE;
    while a.call("GET", "/v1/users/pp", None).1["presence"].as_array().is_some_and(|p| !p.is_empty()) {
        assert!(std::time::Instant::now() < end, "pp never went offline");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let missed = a.push(json!({"to": {"topic": "news"}, "payload": {"body": "two"}, "ttl_secs": 300}));
    a.wait_status(missed, "pending offline", |s| s["pending_offline"] == 1);
    let mut c = m.paho(py, "pp", &token, "dev", "3", false, 1, &["news"])?;
    assert_eq!(c.wait("msg")?, "msg news 1 0 two");
    c.wait("bye")?;
    a.wait_status(missed, "delivered", |s| s["delivered"] == 1 && s["pending_offline"] == 0);
    Ok(())
}
