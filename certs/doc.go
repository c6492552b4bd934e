// Package certs owns Tributary's server-side TLS material: a reloadable
// Store that serves a certificate and verifies client certificates for the
// MQTT and WebSocket listeners, picking up renewed files without rebuilding
// listeners; PeerUsername, which turns a verified client certificate into a
// username; and WriteDev, which writes a throwaway CA with server and client
// certificates for development and tests.
package certs
