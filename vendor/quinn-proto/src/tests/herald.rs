//! Tests of Herald's patches (vendor/quinn-proto/HERALD.md): what an idle connection keeps.

use super::*;

/// A connected pair that exchanged a request and a reply on one bidirectional stream, the way a
/// push session logs in, and went quiet.
fn idle_pair(server: ServerConfig) -> (Pair, ConnectionHandle, ConnectionHandle) {
    let mut pair = Pair::new(Default::default(), server);
    let (client_ch, server_ch) = pair.connect();
    let s = pair.client_streams(client_ch).open(Dir::Bi).unwrap();
    pair.client_send(client_ch, s).write(b"login").unwrap();
    pair.drive();
    let mut recv = pair.server_recv(server_ch, s);
    let mut chunks = recv.read(false).unwrap();
    assert_matches!(chunks.next(usize::MAX), Ok(Some(chunk)) if chunk.bytes[..] == b"login"[..]);
    let _ = chunks.finalize();
    pair.server_send(server_ch, s).write(b"ok").unwrap();
    pair.drive();
    (pair, client_ch, server_ch)
}

#[test]
fn idle_connection_frees_early_spaces_and_sent_packets() {
    let _guard = subscribe();
    let (mut pair, client_ch, server_ch) = idle_pair(server_config());
    for _ in 0..3 {
        // Heartbeats: each end sends, the other acknowledges
        pair.client_conn_mut(client_ch).ping();
        pair.drive();
        pair.server_conn_mut(server_ch).ping();
        pair.drive();
    }
    // (The server's last packet was its PING, which the client acknowledged; an ACK-only packet
    // is only acknowledged along with a later ACK-eliciting one, so it may stay tracked.)
    let server = pair.server_conn_mut(server_ch);
    assert!(!server.is_closed());
    assert!(server.early_spaces_freed(), "server kept its Initial and Handshake spaces");
    assert_eq!(server.data_packets_in_flight(), 0);
    let client = pair.client_conn_mut(client_ch);
    assert!(client.early_spaces_freed(), "client kept its Initial and Handshake spaces");
}

#[test]
fn freed_early_spaces_survive_migration_and_key_update() {
    let _guard = subscribe();
    let (mut pair, client_ch, server_ch) = idle_pair(server_config());
    pair.client.addr = SocketAddr::new(
        Ipv4Addr::new(127, 0, 0, 1).into(),
        CLIENT_PORTS.lock().unwrap().next().unwrap(),
    );
    pair.client_conn_mut(client_ch).ping();
    pair.drive();
    assert_eq!(
        pair.server_conn_mut(server_ch).remote_address(),
        pair.client.addr
    );
    pair.client_conn_mut(client_ch).force_key_update();
    pair.client_conn_mut(client_ch).ping();
    pair.drive();
    let server = pair.server_conn_mut(server_ch);
    assert!(!server.is_closed());
    assert!(server.early_spaces_freed());
}

#[test]
fn issued_cid_limit_caps_the_ids_a_peer_holds() {
    let _guard = subscribe();
    let mut transport = TransportConfig::default();
    transport.issued_cid_limit(2);
    let mut server = server_config();
    server.transport_config(Arc::new(transport));
    let (mut pair, client_ch, server_ch) = idle_pair(server);
    // Sequence 0 from the handshake and one spare
    assert_eq!(pair.server_conn_mut(server_ch).active_local_cid_seq(), (0, 1));

    // Retiring the first ID hands out one more, never more than two at a time
    pair.server_conn_mut(server_ch)
        .rotate_local_cid(1, Instant::now());
    pair.drive();
    assert!(!pair.client_conn_mut(client_ch).is_closed());
    assert_eq!(pair.client_conn_mut(client_ch).active_rem_cid_seq(), 1);
    assert_eq!(pair.server_conn_mut(server_ch).active_local_cid_seq(), (1, 2));

    // Without the limit, the peer's own limit (5 for a quinn client) applies
    let (mut pair, _, server_ch) = idle_pair(server_config());
    assert_eq!(pair.server_conn_mut(server_ch).active_local_cid_seq(), (0, 4));
}
