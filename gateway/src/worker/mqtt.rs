//! The MQTT side of a core: the packets of an MQTT connection turned into the shared session's
//! calls (authenticate, admit, receipts, heartbeats) and MQTT replies. Policies are in
//! `crate::mqtt`'s doc.

use bytes::{Bytes, BytesMut};
use herald_protocol::CloseCode;
use herald_protocol::mqtt::{
    AckKind, ConnAck, ConnAckProperties, Connect, Packet, ProtocolVersion, PublishHeader, QoS, ReasonCode,
    Reply, Subscribe, Unsubscribe, encode_ack, encode_publish_header, encode_suback, encode_unsuback,
};

use herald_protocol::link::{PublishOutcome, PublishRef, PublishResult, TerminalPublish};

use super::{Proto, PushJob, Stop, Worker};
use crate::mqtt::{Filters, MAX_PUBLISHING, MqttConn, Will, inbox_topic, permitted, publish_target};

static PINGRESP: [u8; 2] = [0xd0, 0x00];

/// What a push means for one MQTT connection.
pub(super) enum Publish {
    /// Not for this connection (not subscribed, clean session, or no MQTT form).
    Skip,
    /// For it, but it cannot take it now (window full, over its packet size).
    Drop,
    /// Queue `head` followed by the shared payload.
    Send { head: Bytes, qos1: bool, pid: Option<u16> },
    /// Queue this whole QoS 0 PUBLISH, the same bytes as every recipient of its version.
    Whole(Bytes),
}

/// A push's QoS 0 PUBLISH on a named topic is the same packet for every recipient of an MQTT
/// version: made once per push per core (index: 0 = 3.1.1, 1 = 5.0) and shared, so those
/// recipients cost what a Herald-protocol recipient does (one buffer, no header per recipient).
pub(super) type SharedQos0 = [Option<Bytes>; 2];

/// Decides whether and how `job` reaches connection `m` of `user`, allocating a packet id and
/// encoding the PUBLISH header into `hdr` (split off, so many headers share one allocation). An
/// inbox push's topic is written into `inbox` (the core's scratch, so nothing is allocated).
pub(super) fn publish_for(
    m: &mut MqttConn,
    user: &str,
    job: &PushJob,
    filters: &Filters,
    inbox: &mut String,
    hdr: &mut BytesMut,
    shared: &mut SharedQos0,
) -> Publish {
    let Some(p) = &job.mqtt else { return Publish::Skip };
    let topic = match &p.topic {
        Some(t) => t,
        None => inbox_topic(user, inbox),
    };
    let push_qos = if p.qos1 { QoS::AtLeastOnce } else { QoS::AtMostOnce };
    let qos = if p.backlog {
        if !(m.persistent || p.always) {
            return Publish::Skip;
        }
        push_qos
    } else if p.always {
        push_qos
    } else {
        match m.granted(topic, filters) {
            Some(g) => g.min(push_qos),
            None => return Publish::Skip,
        }
    };
    let qos1 = qos == QoS::AtLeastOnce;
    if !qos1 && p.topic.is_some() {
        let v = m.version();
        let whole = &mut shared[usize::from(v == ProtocolVersion::V5)];
        if whole.is_none() {
            let h = PublishHeader {
                topic,
                qos,
                packet_id: 0,
                dup: false,
                retain: false,
                message_expiry_interval_secs: p.expiry_secs,
                payload_is_utf8: true,
            };
            let mut b = BytesMut::with_capacity(16 + topic.len() + p.payload.len());
            if encode_publish_header(v, &h, p.payload.len(), &mut b).is_err() {
                return Publish::Drop;
            }
            b.extend_from_slice(&p.payload);
            *whole = Some(b.freeze());
        }
        return match whole {
            Some(w) if w.len() <= m.max_packet as usize => Publish::Whole(w.clone()),
            _ => Publish::Drop,
        };
    }
    // (Looked up again after the packet id is taken: both borrow the connection.)
    let pid = if qos1 {
        match m.alloc(p.stream, p.seq) {
            Some(pid) => Some(pid),
            None => return Publish::Drop,
        }
    } else {
        None
    };
    let h = PublishHeader {
        topic,
        qos,
        packet_id: pid.unwrap_or(0),
        dup: p.dup && qos1,
        retain: false,
        message_expiry_interval_secs: p.expiry_secs,
        payload_is_utf8: true,
    };
    if hdr.capacity() < 512 {
        hdr.reserve(16 * 1024);
    }
    match encode_publish_header(m.version(), &h, p.payload.len(), hdr) {
        Ok(len) if len <= m.max_packet as usize => Publish::Send { head: hdr.split().freeze(), qos1, pid },
        _ => {
            hdr.clear();
            if let Some(pid) = pid {
                m.release(pid);
            }
            Publish::Drop
        }
    }
}

fn mqtt_mut(proto: &mut Proto) -> Option<&mut MqttConn> {
    match proto {
        Proto::Mqtt(m) => Some(m),
        Proto::Herald => None,
    }
}

impl Worker {
    fn mqtt(&mut self, slot: usize) -> &mut MqttConn {
        match &mut self.conns[slot].proto {
            Proto::Mqtt(m) => m,
            Proto::Herald => unreachable!("an MQTT packet on a Herald connection"),
        }
    }

    /// Ends the connection with `reason` (5.0 DISCONNECT; 3.1.1 just closes).
    fn mqtt_refuse(&mut self, slot: usize, reason: ReasonCode, code: CloseCode) -> Stop {
        let reply = if self.mqtt(slot).v5_connected() { Reply::Disconnect(reason) } else { Reply::Close };
        let mut b = BytesMut::new();
        reply.encode(&mut b);
        Stop::Send((!b.is_empty()).then(|| b.freeze()), code)
    }

    fn queue_mqtt(&mut self, slot: usize, f: BytesMut) {
        self.queue_reply(slot, f.freeze());
    }

    pub(super) fn on_packet(&mut self, slot: usize, packet: Packet, now: u64) -> Result<(), Stop> {
        if let Packet::Connect(c) = packet {
            // The decoder lets exactly one CONNECT through, first.
            return self.on_connect(slot, *c, now);
        }
        if self.conns[slot].auth.is_none() {
            return Err(Stop::Close(CloseCode::PROTOCOL_ERROR));
        }
        match packet {
            Packet::PingReq => {
                self.m.heartbeats.inc();
                self.queue_pong(slot, Bytes::from_static(&PINGRESP));
                Ok(())
            }
            Packet::PubAck(ack) => {
                self.m.mqtt.pubacks_in.inc();
                if let Some((stream, seq)) = self.mqtt(slot).release(ack.packet_id)
                    && let Some(a) = &self.conns[slot].auth
                {
                    self.receipts.add(&self.node.metrics, &a.user, &a.device, stream, seq, seq);
                }
                Ok(())
            }
            Packet::Subscribe(s) => {
                self.on_subscribe(slot, s);
                Ok(())
            }
            Packet::Unsubscribe(u) => {
                self.on_unsubscribe(slot, &u);
                Ok(())
            }
            Packet::Publish(p) => self.on_publish(slot, p),
            Packet::Disconnect(d) => {
                if d.reason != ReasonCode::DISCONNECT_WITH_WILL_MESSAGE {
                    self.mqtt(slot).take_will();
                }
                Err(Stop::PeerClosed)
            }
            Packet::Auth(_) => {
                Err(self.mqtt_refuse(slot, ReasonCode::BAD_AUTHENTICATION_METHOD, CloseCode::PROTOCOL_ERROR))
            }
            // Herald never sends QoS 2, so there is nothing to receive, release or complete.
            Packet::PubRec(_) | Packet::PubRel(_) | Packet::PubComp(_) => {
                Err(self.mqtt_refuse(slot, ReasonCode::PROTOCOL_ERROR, CloseCode::PROTOCOL_ERROR))
            }
            Packet::Connect(_) => unreachable!("handled above"),
        }
    }

    fn on_connect(&mut self, slot: usize, c: Connect, now: u64) -> Result<(), Stop> {
        let v = c.version;
        let refuse = |w: &Worker, reason: ReasonCode, code: CloseCode| {
            w.m.login_failed(code);
            let mut b = BytesMut::with_capacity(8);
            // 3.1.1 has no code for some reasons: close without an answer then.
            let sent = ConnAck::new(false, reason).encode(v, &mut b).is_ok();
            Err(Stop::Send(sent.then(|| b.freeze()), code))
        };
        if c.authentication_method.is_some() {
            return refuse(self, ReasonCode::BAD_AUTHENTICATION_METHOD, CloseCode::AUTH_MALFORMED);
        }
        // 5.0: a will the server cannot publish as asked is refused (CONNACK says what is
        // available); 3.1.1 has no code for it: QoS 2 is lowered to 1, retain ignored.
        if v == ProtocolVersion::V5
            && let Some(w) = &c.will
        {
            if w.qos == QoS::ExactlyOnce {
                return refuse(self, ReasonCode::QOS_NOT_SUPPORTED, CloseCode::PROTOCOL_ERROR);
            }
            if w.retain {
                return refuse(self, ReasonCode::RETAIN_NOT_SUPPORTED, CloseCode::PROTOCOL_ERROR);
            }
        }
        let Some(password) = c.password.as_deref() else {
            return refuse(self, ReasonCode::BAD_USER_NAME_OR_PASSWORD, CloseCode::AUTH_MALFORMED);
        };
        let claims = match self.authenticate(password) {
            Ok(claims) => claims,
            Err(code) => return refuse(self, crate::mqtt::connack_reason(code), code),
        };
        if c.username.as_ref().is_none_or(|u| u.as_str() != claims.user) {
            return refuse(self, ReasonCode::BAD_USER_NAME_OR_PASSWORD, CloseCode::AUTH_FORGED);
        }
        let assigned = c.client_id.is_empty();
        if !assigned && c.client_id.as_str() != claims.device {
            return refuse(self, ReasonCode::CLIENT_IDENTIFIER_NOT_VALID, CloseCode::DEVICE_MISMATCH);
        }
        let device = claims.device.clone();
        let cfg = &self.node.config;
        let grace_ms = match c.keep_alive_secs {
            0 => cfg.heartbeat_grace_secs.saturating_mul(1000),
            k => u32::from(k) * 1500,
        };
        let max_packet_bytes = cfg.max_frame_bytes as u32;
        self.admit(slot, claims, Vec::new(), now, grace_ms);
        let m = self.mqtt(slot);
        m.persistent = c.session_expiry_secs() > 0;
        m.receive_max = c.receive_maximum;
        m.max_packet = c.maximum_packet_size.unwrap_or(u32::MAX);
        m.set_will(c.will.map(|w| {
            Box::new(Will {
                topic: w.topic.as_str().into(),
                // Its own copy: a slice would pin the whole receive buffer.
                payload: Bytes::copy_from_slice(&w.payload),
                qos1: w.qos != QoS::AtMostOnce,
                delay_secs: w.delay_interval_secs,
                expiry_secs: w.message_expiry_interval_secs,
            })
        }));
        let mut ack = ConnAck::new(false, ReasonCode::SUCCESS);
        ack.properties = ConnAckProperties::herald(max_packet_bytes);
        ack.properties.receive_maximum = Some(MAX_PUBLISHING);
        if assigned {
            ack.properties.assigned_client_identifier = Some(&device);
        }
        let mut b = BytesMut::with_capacity(64);
        if ack.encode(v, &mut b).is_err() {
            return Err(Stop::Close(CloseCode::INTERNAL_ERROR));
        }
        self.queue_mqtt(slot, b);
        Ok(())
    }

    fn on_subscribe(&mut self, slot: usize, s: Subscribe) {
        let Some(user) = self.conns[slot].auth.as_ref().map(|a| a.user.clone()) else { return };
        let snap = self.node.tables.load();
        let Some(follows) = self.index.subscriptions(&user) else {
            // The user's subscriptions are on their way from the control plane (they follow the
            // Online report): answer when they arrive.
            self.mqtt(slot).park(s);
            return;
        };
        let Proto::Mqtt(m) = &mut self.conns[slot].proto else { return };
        let v = m.version();
        let mut inbox = String::new();
        let inbox = inbox_topic(&user, &mut inbox);
        let mut reasons = Vec::with_capacity(s.subscriptions.len());
        for sub in s.subscriptions {
            let reason = if sub.filter.is_shared() {
                ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED
            } else if permitted(&sub.filter, inbox, follows, &snap) {
                let qos = sub.options.max_qos.min(QoS::AtLeastOnce);
                // The core's table keeps its own copy of the text: the decoded filter is a
                // slice of the receive buffer, which holding it would pin.
                m.grant(sub.filter.as_str(), qos, &mut self.filters);
                ReasonCode(qos as u8)
            } else {
                ReasonCode::NOT_AUTHORIZED
            };
            let granted =
                if reason.0 < 0x80 { &self.m.mqtt.filters_granted } else { &self.m.mqtt.filters_refused };
            granted.inc();
            reasons.push(reason);
        }
        let mut b = BytesMut::with_capacity(8 + reasons.len());
        if encode_suback(v, s.packet_id, &reasons, &mut b).is_ok() {
            self.queue_mqtt(slot, b);
        }
    }

    /// Answers the SUBSCRIBEs of `user`'s MQTT connections that waited for its subscriptions.
    pub(super) fn resume_parked(&mut self, user: &str) {
        let mut slots = std::mem::take(&mut self.scratch);
        slots.clear();
        slots.extend(self.index.user_conns(user).iter().map(|&s| s as usize));
        for &slot in &slots {
            let Some(m) = mqtt_mut(&mut self.conns[slot].proto) else { continue };
            let parked = m.take_parked();
            for s in parked {
                self.on_subscribe(slot, s);
            }
        }
        self.scratch = slots;
    }

    fn on_unsubscribe(&mut self, slot: usize, u: &Unsubscribe) {
        let Proto::Mqtt(m) = &mut self.conns[slot].proto else { return };
        let v = m.version();
        let reasons: Vec<ReasonCode> = u
            .filters
            .iter()
            .map(|f| {
                if m.revoke(f.as_str(), &mut self.filters) {
                    ReasonCode::SUCCESS
                } else {
                    ReasonCode::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect();
        let mut b = BytesMut::with_capacity(8 + reasons.len());
        if encode_unsuback(v, u.packet_id, &reasons, &mut b).is_ok() {
            self.queue_mqtt(slot, b);
        }
    }

    /// A terminal's PUBLISH: refused, or sent to the control plane as a push (policy in
    /// `crate::mqtt`'s doc).
    fn on_publish(&mut self, slot: usize, p: herald_protocol::mqtt::Publish) -> Result<(), Stop> {
        self.m.mqtt.publishes_in.inc();
        let v = self.mqtt(slot).version();
        if p.qos == QoS::ExactlyOnce {
            self.m.mqtt.publishes_refused.inc();
            return Err(self.mqtt_refuse(slot, ReasonCode::QOS_NOT_SUPPORTED, CloseCode::PROTOCOL_ERROR));
        }
        if p.retain && v == ProtocolVersion::V5 {
            self.m.mqtt.publishes_refused.inc();
            return Err(self.mqtt_refuse(slot, ReasonCode::RETAIN_NOT_SUPPORTED, CloseCode::PROTOCOL_ERROR));
        }
        if !self.node.config.mqtt_allow_publish {
            return self.publish_refused(slot, p.packet_id, ReasonCode::NOT_AUTHORIZED);
        }
        let Some(target) = publish_target(p.topic.as_str()) else {
            return self.publish_refused(slot, p.packet_id, ReasonCode::NOT_AUTHORIZED);
        };
        let Ok(body) = std::str::from_utf8(&p.payload) else {
            return self.publish_refused(slot, p.packet_id, ReasonCode::PAYLOAD_FORMAT_INVALID);
        };
        if !crate::link::publish_room(&self.node) {
            return self.publish_refused(slot, p.packet_id, ReasonCode::QUOTA_EXCEEDED);
        }
        let Some(a) = &self.conns[slot].auth else { return Err(Stop::Close(CloseCode::PROTOCOL_ERROR)) };
        let reply = p.packet_id.map(|packet_id| PublishRef {
            core: self.n as u16,
            slot: slot as u32,
            session_id: a.session_id,
            packet_id,
        });
        let publish = TerminalPublish {
            user: a.user.to_string(),
            device: a.device.to_string(),
            target,
            body: body.to_owned(),
            ttl_secs: if reply.is_some() { p.message_expiry_interval_secs } else { Some(0) },
            reply,
            will_delay_secs: None,
        };
        if reply.is_some() && !self.mqtt(slot).begin_publish() {
            self.m.mqtt.publishes_refused.inc();
            return Err(self.mqtt_refuse(
                slot,
                ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                CloseCode::PROTOCOL_ERROR,
            ));
        }
        crate::link::send_publish(&self.node, publish);
        Ok(())
    }

    /// A PUBLISH this node refuses: 5.0 QoS 1 gets PUBACK `reason` and the connection stays;
    /// 5.0 QoS 0 gets DISCONNECT `reason`; 3.1.1 cannot say no and is closed. Over quota (the
    /// link holds too many messages) QoS 0 is only dropped: at most once, and the terminal did
    /// nothing wrong.
    fn publish_refused(
        &mut self,
        slot: usize,
        packet_id: Option<u16>,
        reason: ReasonCode,
    ) -> Result<(), Stop> {
        self.m.mqtt.publishes_refused.inc();
        if packet_id.is_none() && reason == ReasonCode::QUOTA_EXCEEDED {
            return Ok(());
        }
        let v = self.mqtt(slot).version();
        match (v, packet_id) {
            (ProtocolVersion::V5, Some(pid)) => {
                let mut b = BytesMut::with_capacity(8);
                let _ = encode_ack(AckKind::PubAck, v, pid, reason, &mut b);
                self.queue_mqtt(slot, b);
                Ok(())
            }
            _ => Err(self.mqtt_refuse(slot, reason, CloseCode::PROTOCOL_ERROR)),
        }
    }

    /// The control plane's answer to a terminal's QoS 1 PUBLISH: its PUBACK (3.1.1: a refusal
    /// closes the connection, the only "no" 3.1.1 has).
    pub(super) fn on_published(&mut self, r: PublishResult) {
        let slot = r.reference.slot as usize;
        let Some(c) = self.conns.get_mut(slot) else { return };
        if c.closing.is_some() || c.auth.as_ref().is_none_or(|a| a.session_id != r.reference.session_id) {
            return;
        }
        let Proto::Mqtt(m) = &mut c.proto else { return };
        m.end_publish();
        let v = m.version();
        let reason = match r.outcome {
            PublishOutcome::Accepted { .. } => ReasonCode::SUCCESS,
            PublishOutcome::NotAuthorized => ReasonCode::NOT_AUTHORIZED,
            PublishOutcome::Invalid => ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR,
            PublishOutcome::Unavailable => ReasonCode::UNSPECIFIED_ERROR,
        };
        if reason != ReasonCode::SUCCESS {
            self.m.mqtt.publishes_refused.inc();
            if v == ProtocolVersion::V311 {
                self.close_conn(slot, CloseCode::PROTOCOL_ERROR, false, false);
                return;
            }
        }
        let mut b = BytesMut::with_capacity(8);
        if encode_ack(AckKind::PubAck, v, r.reference.packet_id, reason, &mut b).is_ok() {
            self.queue_mqtt(slot, b);
        }
    }

    /// The connection of `user`/`device` ended with `code`: its will, if it has one and the end
    /// calls for it, goes to the control plane.
    pub(super) fn send_will(&mut self, m: &mut MqttConn, user: &str, device: &str, code: CloseCode) {
        let Some(w) = m.take_will() else { return };
        if matches!(code, CloseCode::REPLACED | CloseCode::SHUTTING_DOWN | CloseCode::AUTH_REVOKED) {
            return;
        }
        if !self.node.config.mqtt_allow_publish {
            self.m.mqtt.publishes_refused.inc();
            return;
        }
        let (Some(target), Ok(body)) = (publish_target(&w.topic), std::str::from_utf8(&w.payload)) else {
            self.m.mqtt.publishes_refused.inc();
            return;
        };
        self.m.mqtt.wills.inc();
        crate::link::send_publish(
            &self.node,
            TerminalPublish {
                user: user.to_owned(),
                device: device.to_owned(),
                target,
                body: body.to_owned(),
                ttl_secs: if w.qos1 { w.expiry_secs } else { Some(0) },
                reply: None,
                will_delay_secs: Some(w.delay_secs),
            },
        );
    }
}
