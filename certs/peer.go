package certs

import (
	"crypto/tls"
	"fmt"
)

// Values of PeerUsername's from argument: which field of the client
// certificate is the username.
const (
	// UsernameFromCN takes the subject common name. It is the default.
	UsernameFromCN = "cn"
	// UsernameFromSANDNS takes the first DNS subject alternative name.
	UsernameFromSANDNS = "san-dns"
	// UsernameFromSANEmail takes the first email subject alternative name.
	UsernameFromSANEmail = "san-email"
	// UsernameFromSANURI takes the first URI subject alternative name.
	UsernameFromSANURI = "san-uri"
)

// CheckUsernameFrom reports whether from is a valid PeerUsername source,
// for config validation; "" means "cn".
func CheckUsernameFrom(from string) error {
	switch from {
	case "", UsernameFromCN, UsernameFromSANDNS, UsernameFromSANEmail, UsernameFromSANURI:
		return nil
	}
	return fmt.Errorf("%q is not one of %q, %q, %q, %q", from,
		UsernameFromCN, UsernameFromSANDNS, UsernameFromSANEmail, UsernameFromSANURI)
}

// PeerUsername returns the username carried by the client certificate of a
// completed server-side handshake: the field named by from (see the
// UsernameFrom constants; "" means "cn") of the leaf certificate, taking
// the first value of its kind. It reports false when the field is empty or
// from is unknown, and always when the handshake verified no client chain,
// so a certificate the server merely received (ClientAuth "none", or a
// handshake with verification off) never names a user.
func PeerUsername(cs tls.ConnectionState, from string) (string, bool) {
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return "", false
	}
	leaf := cs.VerifiedChains[0][0]
	var v string
	switch from {
	case "", UsernameFromCN:
		v = leaf.Subject.CommonName
	case UsernameFromSANDNS:
		if len(leaf.DNSNames) > 0 {
			v = leaf.DNSNames[0]
		}
	case UsernameFromSANEmail:
		if len(leaf.EmailAddresses) > 0 {
			v = leaf.EmailAddresses[0]
		}
	case UsernameFromSANURI:
		if len(leaf.URIs) > 0 && leaf.URIs[0] != nil {
			v = leaf.URIs[0].String()
		}
	}
	return v, v != ""
}
