//! MQTT 3.1.1 and 5.0 packet codec (sans-IO), for the gateway's MQTT listener.
