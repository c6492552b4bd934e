package certs

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"net/url"
	"testing"
)

func TestPeerUsername(t *testing.T) {
	full := &x509.Certificate{
		Subject:        pkix.Name{CommonName: "alice"},
		DNSNames:       []string{"alice.devices.example", "second.example"},
		EmailAddresses: []string{"alice@example.com", "other@example.com"},
		URIs:           []*url.URL{{Scheme: "spiffe", Host: "example.com", Path: "/device/alice"}},
	}
	bare := &x509.Certificate{}
	ca := &x509.Certificate{Subject: pkix.Name{CommonName: "Some CA"}}
	verified := func(leaf *x509.Certificate) tls.ConnectionState {
		return tls.ConnectionState{
			PeerCertificates: []*x509.Certificate{leaf},
			VerifiedChains:   [][]*x509.Certificate{{leaf, ca}},
		}
	}

	tests := []struct {
		name   string
		cs     tls.ConnectionState
		from   string
		want   string
		wantOK bool
	}{
		{"default is cn", verified(full), "", "alice", true},
		{"cn", verified(full), "cn", "alice", true},
		{"san-dns first", verified(full), "san-dns", "alice.devices.example", true},
		{"san-email first", verified(full), "san-email", "alice@example.com", true},
		{"san-uri", verified(full), "san-uri", "spiffe://example.com/device/alice", true},
		{"unknown source", verified(full), "serial", "", false},
		{"empty cn", verified(bare), "cn", "", false},
		{"no dns", verified(bare), "san-dns", "", false},
		{"no email", verified(bare), "san-email", "", false},
		{"no uri", verified(bare), "san-uri", "", false},
		{"unverified peer certificate", tls.ConnectionState{PeerCertificates: []*x509.Certificate{full}}, "cn", "", false},
		{"no certificate", tls.ConnectionState{}, "cn", "", false},
		{"empty chain", tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{}}}, "cn", "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := PeerUsername(tt.cs, tt.from)
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("PeerUsername = %q, %v; want %q, %v", got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestCheckUsernameFrom(t *testing.T) {
	for from, wantOK := range map[string]bool{
		"": true, "cn": true, "san-dns": true, "san-email": true, "san-uri": true,
		"CN": false, "san": false, "serial": false,
	} {
		if err := CheckUsernameFrom(from); (err == nil) != wantOK {
			t.Errorf("CheckUsernameFrom(%q) = %v, want ok=%v", from, err, wantOK)
		}
	}
}
