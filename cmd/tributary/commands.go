package main

import (
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/tributary-io/tributary/auth"
	"github.com/tributary-io/tributary/certs"
)

// certsCommand runs `tributary certs dev --out DIR`: a development CA with
// a server certificate for localhost and 127.0.0.1 and a client
// certificate, so TLS can be tried in a minute.
func certsCommand(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] != "dev" {
		fmt.Fprintln(stderr, "tributary: usage: tributary certs dev --out DIR [--host NAME_OR_IP ...] [--force]")
		return 2
	}
	fs := flag.NewFlagSet("tributary certs dev", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "", "directory to write ca.crt, ca.key, server.crt, server.key, client.crt and client.key to (required)")
	var hosts multiFlag
	fs.Var(&hosts, "host", "another name or IP address for the server certificate besides localhost, 127.0.0.1 and ::1 (repeatable, or comma-separated)")
	clientCN := fs.String("client-cn", certs.DevClientCN, "common name of the client certificate (the MQTT username it authenticates as)")
	force := fs.Bool("force", false, "overwrite existing files (a new CA: clients must trust the new ca.crt)")
	if err := fs.Parse(args[1:]); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if *out == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "tributary: usage: tributary certs dev --out DIR [--host NAME_OR_IP ...] [--force]")
		return 2
	}
	written, err := certs.WriteDev(*out, certs.DevOptions{Hosts: hosts, Force: *force, ClientCN: *clientCN})
	if err != nil {
		fmt.Fprintf(stderr, "tributary: writing development certificates: %v\n", err)
		return 1
	}
	for _, p := range written {
		fmt.Fprintln(stdout, p)
	}
	fmt.Fprintf(stderr, "development certificates written; for example:\n  tributary --mqtt-tls-addr :8883 --tls-cert-file %[1]s/server.crt --tls-key-file %[1]s/server.key\n  mosquitto_pub --cafile %[1]s/ca.crt -h localhost -p 8883 -t test -m hello\nThe CA key is in %[1]s/ca.key: these certificates are for development only.\n", *out)
	return 0
}

// multiFlag collects a repeatable, comma-separable flag.
type multiFlag []string

func (m *multiFlag) String() string { return strings.Join(*m, ",") }

func (m *multiFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*m = append(*m, s)
		}
	}
	return nil
}

// passwdCommand reads a password from stdin (prompting without echo on a
// terminal) and prints its bcrypt hash for the users file.
func passwdCommand(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		fmt.Fprintln(stderr, "tributary: usage: tributary passwd < password   (or run it at a terminal to be prompted)")
		return 2
	}
	pw, err := auth.ReadPassword(stdin, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "tributary: %v\n", err)
		return 1
	}
	h, err := auth.HashPassword(pw)
	if err != nil {
		fmt.Fprintf(stderr, "tributary: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, h)
	return 0
}

// tokenCommand prints a new random API token (shown once) and the entry
// for the tokens file, which holds only its hash.
func tokenCommand(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("tributary token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	user := fs.String("user", "", "the user the token acts as (its Kafka topic ACLs apply); required")
	name := fs.String("name", "", "a name for the token, used in logs (default: the user)")
	if err := fs.Parse(args); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if *user == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "tributary: usage: tributary token --user NAME [--name TOKEN_NAME]")
		return 2
	}
	if *name == "" {
		*name = *user
	}
	tok, hash, err := auth.NewToken()
	if err != nil {
		fmt.Fprintf(stderr, "tributary: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, tok)
	fmt.Fprintf(stderr, "the token above is shown only now; add this entry to the tokens file:\n  - {name: %q, user: %q, sha256: %q}\n", *name, *user, hash)
	return 0
}
