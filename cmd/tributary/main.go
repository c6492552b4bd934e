// Command tributary runs the Tributary bridge: an MQTT broker whose
// publishes land in Kafka, acknowledged only once Kafka has them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/tributary-io/tributary/bridge"
	"github.com/tributary-io/tributary/config"
)

// version is set at build time with -ldflags "-X main.version=...";
// without it, versionString falls back on what Go recorded in the binary.
var version = "dev"

// versionString is the version, and for a binary built without
// -ldflags (go build, go install) the module version or the commit Go
// stamped into it.
func versionString() string {
	v := version
	info, ok := debug.ReadBuildInfo()
	if v != "dev" || !ok {
		return v
	}
	if mv := info.Main.Version; mv != "" && mv != "(devel)" {
		return mv
	}
	var rev, modified string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	if rev == "" {
		return v
	}
	v += "-" + rev[:min(12, len(rev))]
	if modified == "true" {
		v += "-modified"
	}
	return v
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// The first signal starts the graceful shutdown; a second one
		// takes the default action and ends the process at once.
		<-ctx.Done()
		stop()
	}()
	code := realMain(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `usage: tributary [command] [flags]

commands:
  (none)                 run the bridge
  check-config           validate the configuration and exit
  mapping explain TOPIC  show which mapping rule a topic matches, its Kafka topic and key
                         (--source UPSTREAM: as a message from that upstream)
  version                print the version
  certs dev --out DIR    write a development CA, server and client certificates
  passwd                 read a password from stdin and print its bcrypt hash (for --users-file)
  token                  print a new random API token and the hash to put in --tokens-file

Run 'tributary -h' for the flags; each also has a TRIBUTARY_* environment form and a YAML key.
`

const explainUsage = "tributary mapping explain [--source UPSTREAM] [flags] TOPIC"

// takeSource removes mapping explain's own flag, --source NAME (or
// --source=NAME), from args: the publish comes from that upstream rather
// than from a local device.
func takeSource(args []string) (source string, rest []string, err error) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return source, append(rest, args[i:]...), nil
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") || name != "source" {
			rest = append(rest, a)
			continue
		}
		if !hasValue {
			if i+1 == len(args) {
				return "", nil, errors.New("--source needs an upstream name")
			}
			i++
			value = args[i]
		}
		if value == "" {
			return "", nil, errors.New("--source needs an upstream name")
		}
		source = value
	}
	return source, rest, nil
}

// realMain runs a command and returns the exit code: 0 ok, 1 failure,
// 2 bad configuration or usage.
func realMain(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	cmd := ""
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "version":
		fmt.Fprintf(stdout, "tributary %s (librdkafka %s, %s)\n", versionString(), bridge.LibrdkafkaVersion(), runtime.Version())
		return 0
	case "help":
		fmt.Fprint(stdout, usage)
		return 0
	case "certs":
		return certsCommand(args, stdout, stderr)
	case "passwd":
		return passwdCommand(args, stdin, stdout, stderr)
	case "token":
		return tokenCommand(args, stdout, stderr)
	case "", "check-config", "mapping":
	default:
		fmt.Fprintf(stderr, "tributary: unknown command %q\n%s", cmd, usage)
		return 2
	}
	var source string
	if cmd == "mapping" {
		if len(args) == 0 || args[0] != "explain" {
			fmt.Fprintf(stderr, "tributary: usage: %s\n", explainUsage)
			return 2
		}
		var err error
		if source, args, err = takeSource(args[1:]); err != nil {
			fmt.Fprintf(stderr, "tributary: %v\n", err)
			return 2
		}
	}

	cfg, rest, err := config.Load(config.Options{Args: args, LookupEnv: os.LookupEnv, Output: stderr, Name: "tributary " + cmd,
		CheckKafkaProperties: checkKafkaProperties})
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(stderr, "tributary: %v\n", err)
		return 2
	}

	switch cmd {
	case "check-config":
		if len(rest) > 0 {
			fmt.Fprintf(stderr, "tributary: unexpected arguments %q\n", rest)
			return 2
		}
		fmt.Fprintln(stdout, "configuration ok")
		return 0
	case "mapping":
		if len(rest) != 1 {
			fmt.Fprintf(stderr, "tributary: usage: %s\n", explainUsage)
			return 2
		}
		if source != "" && !cfg.HasUpstream(source) {
			fmt.Fprintf(stderr, "tributary: --source %q: no upstream of that name is configured\n", source)
			return 2
		}
		m, err := cfg.Mapper()
		if err != nil {
			fmt.Fprintf(stderr, "tributary: %v\n", err)
			return 2
		}
		out, ok := explainFixedTopic(cfg.Upstreams, source, rest[0])
		if !ok {
			out = m.Explain(source, rest[0])
		}
		if line := explainUnsubscribed(cfg.Upstreams, source, rest[0]); line != "" {
			// Under the first line, which names the topic and the
			// upstream: what follows is moot for such a message.
			first, others, _ := strings.Cut(out, "\n")
			out = first + "\n" + line + others
		}
		fmt.Fprint(stdout, out)
		return 0
	}
	if len(rest) > 0 {
		fmt.Fprintf(stderr, "tributary: unexpected arguments %q\n%s", rest, usage)
		return 2
	}

	log := newLogger(cfg.Log, stderr)
	if err := run(ctx, cfg, log); err != nil {
		if cfg.Log.Format == "json" {
			// One format on stderr, for log pipelines that parse it.
			log.Error("tributary exits", "error", err.Error())
		} else {
			fmt.Fprintf(stderr, "tributary: %v\n", err)
		}
		return 1
	}
	return 0
}

// checkKafkaProperties lets configuration validation ask librdkafka about
// kafka.properties without creating a Kafka client.
func checkKafkaProperties(props map[string]string) []config.PropertyProblem {
	var out []config.PropertyProblem
	for _, e := range bridge.CheckProperties(props) {
		out = append(out, config.PropertyProblem{Name: e.Name, Unknown: e.Unknown, Reason: e.Reason})
	}
	return out
}

func newLogger(cfg config.LogConfig, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.Level))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
