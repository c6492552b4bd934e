package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/tributary-io/tributary/config"
)

// The compose deployment (compose/docker-compose.yml, the Dockerfile it
// builds, the config file it mounts) cannot be started where these tests
// run: there is no Docker engine. What can go wrong in it without anyone
// noticing is Tributary's side: a setting renamed in the config package
// and not in the compose file makes the container exit 2 at start, or
// silently ignore a TRIBUTARY_* variable. These tests read the files as
// Docker would hand them to the binary and load the result with the same
// code as `tributary check-config`.

const (
	composeFilePath = "../../compose/docker-compose.yml"
	composeService  = "tributary"
)

// composeDeployment is what the compose file and the Dockerfile give the
// tributary container.
type composeDeployment struct {
	// dir is the compose file's directory, against which relative paths
	// in it are resolved.
	dir string
	// args are the arguments after the image's entrypoint (command:).
	args []string
	// env is the container's environment: the Dockerfile's ENV, then the
	// service's environment. A variable listed without a value (taken
	// from the host by compose) has none here.
	env map[string]*string
	// mounts maps a path in the container to the host path a bind mount
	// puts there.
	mounts map[string]string
	// published are the container ports the service publishes.
	published []int
	// exposed are the Dockerfile's EXPOSE ports.
	exposed []int
	// buildFile is the Dockerfile the service builds from, on the host.
	buildFile string
	// entrypoint is set when the service overrides the image's.
	entrypoint bool
	// advertised holds each other service's KAFKA_ADVERTISED_LISTENERS.
	advertised map[string]string
	// problems are what reading the files found.
	problems []string
}

func (d composeDeployment) clone() composeDeployment {
	d.args = slices.Clone(d.args)
	d.env = maps.Clone(d.env)
	d.mounts = maps.Clone(d.mounts)
	d.published = slices.Clone(d.published)
	d.exposed = slices.Clone(d.exposed)
	d.problems = slices.Clone(d.problems)
	return d
}

// literal is s as compose passes it on: "$$" is a "$". Variable
// substitution (${NAME}, $NAME) is not done here, so a value that uses it
// cannot be checked and is reported.
func literal(s string) (string, error) {
	if !strings.Contains(strings.ReplaceAll(s, "$$", ""), "$") {
		return strings.ReplaceAll(s, "$$", "$"), nil
	}
	return "", fmt.Errorf("%q uses variable substitution, which this check does not follow: put the value in the file", s)
}

func readComposeDeployment(t *testing.T, path string) composeDeployment {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Services map[string]struct {
			Build       yaml.Node   `yaml:"build"`
			Command     yaml.Node   `yaml:"command"`
			Entrypoint  yaml.Node   `yaml:"entrypoint"`
			Environment yaml.Node   `yaml:"environment"`
			Ports       []yaml.Node `yaml:"ports"`
			Volumes     []yaml.Node `yaml:"volumes"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(b, &file); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	svc, ok := file.Services[composeService]
	if !ok {
		t.Fatalf("%s has no service %q", path, composeService)
	}
	d := composeDeployment{
		dir:        filepath.Dir(path),
		env:        map[string]*string{},
		mounts:     map[string]string{},
		advertised: map[string]string{},
		entrypoint: !svc.Entrypoint.IsZero(),
	}
	bad := func(format string, args ...any) { d.problems = append(d.problems, fmt.Sprintf(format, args...)) }

	// The build: its Dockerfile's ENV comes before the service's
	// environment, its EXPOSE should match the listeners.
	context, dockerfile := "", "Dockerfile"
	switch svc.Build.Kind {
	case yaml.ScalarNode:
		context = svc.Build.Value
	case yaml.MappingNode:
		var build struct {
			Context    string `yaml:"context"`
			Dockerfile string `yaml:"dockerfile"`
		}
		if err := svc.Build.Decode(&build); err != nil {
			t.Fatalf("services.%s.build: %v", composeService, err)
		}
		context = build.Context
		if build.Dockerfile != "" {
			dockerfile = build.Dockerfile
		}
	default:
		bad("services.%s: no build section: the service is to run the image built from this repository", composeService)
	}
	if context != "" {
		d.buildFile = filepath.Join(d.dir, context, dockerfile)
		d.readDockerfile(t)
	}

	args, err := stringList(svc.Command)
	if err != nil {
		bad("services.%s.command: %v", composeService, err)
	}
	for _, a := range args {
		v, err := literal(a)
		if err != nil {
			bad("services.%s.command: %v", composeService, err)
		}
		d.args = append(d.args, v)
	}

	env, err := environment(svc.Environment)
	if err != nil {
		bad("services.%s.environment: %v", composeService, err)
	}
	for k, v := range env {
		if v != nil {
			lit, err := literal(*v)
			if err != nil {
				bad("services.%s.environment.%s: %v", composeService, k, err)
			}
			v = &lit
		}
		d.env[k] = v
	}

	for _, p := range svc.Ports {
		port, err := containerPort(p)
		if err != nil {
			bad("services.%s.ports: %v", composeService, err)
			continue
		}
		d.published = append(d.published, port)
	}

	for _, v := range svc.Volumes {
		source, target, bind, err := volume(v)
		if err != nil {
			bad("services.%s.volumes: %v", composeService, err)
			continue
		}
		if bind {
			if !filepath.IsAbs(source) {
				source = filepath.Join(d.dir, source)
			}
			d.mounts[target] = source
		}
	}

	for name, s := range file.Services {
		if name == composeService {
			continue
		}
		env, err := environment(s.Environment)
		if err != nil {
			bad("services.%s.environment: %v", name, err)
			continue
		}
		if v := env["KAFKA_ADVERTISED_LISTENERS"]; v != nil {
			d.advertised[name] = *v
		}
	}
	return d
}

// readDockerfile takes the ENV and EXPOSE instructions of d.buildFile,
// in their one-line forms (ENV NAME=value, EXPOSE port...).
func (d *composeDeployment) readDockerfile(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile(d.buildFile)
	if err != nil {
		d.problems = append(d.problems, fmt.Sprintf("the build's Dockerfile: %v", err))
		return
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 2 {
			continue
		}
		switch strings.ToUpper(fields[0]) {
		case "ENV":
			for _, kv := range fields[1:] {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					d.problems = append(d.problems, fmt.Sprintf("Dockerfile: %q: write ENV as NAME=value", sc.Text()))
					continue
				}
				d.env[k] = &v
			}
		case "EXPOSE":
			for _, p := range fields[1:] {
				n, err := strconv.Atoi(strings.TrimSuffix(p, "/tcp"))
				if err != nil {
					d.problems = append(d.problems, fmt.Sprintf("Dockerfile: EXPOSE %s: not a TCP port", p))
					continue
				}
				d.exposed = append(d.exposed, n)
			}
		}
	}
}

// stringList reads a compose command: a list of strings, or one string
// that compose splits like a shell (only plain words are understood here).
func stringList(n yaml.Node) ([]string, error) {
	switch n.Kind {
	case 0:
		return nil, nil
	case yaml.ScalarNode:
		if strings.ContainsAny(n.Value, `"'\`) {
			return nil, fmt.Errorf("%q: write a quoted command as a list", n.Value)
		}
		return strings.Fields(n.Value), nil
	}
	var list []string
	err := n.Decode(&list)
	return list, err
}

// environment reads a compose environment section, a map or a list of
// NAME=value. A variable without a value has a nil value.
func environment(n yaml.Node) (map[string]*string, error) {
	env := map[string]*string{}
	switch n.Kind {
	case 0:
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i].Value, n.Content[i+1]
			if v.Kind != yaml.ScalarNode {
				return nil, fmt.Errorf("%s: not a single value", k)
			}
			if v.Tag == "!!null" {
				env[k] = nil
				continue
			}
			env[k] = &v.Value
		}
	case yaml.SequenceNode:
		var list []string
		if err := n.Decode(&list); err != nil {
			return nil, err
		}
		for _, item := range list {
			k, v, ok := strings.Cut(item, "=")
			if !ok {
				env[k] = nil
				continue
			}
			env[k] = &v
		}
	default:
		return nil, errors.New("neither a map nor a list")
	}
	return env, nil
}

// containerPort reads one entry of a compose ports section, in the short
// ([host_ip:][host_port:]container_port[/protocol]) or long syntax.
func containerPort(n yaml.Node) (int, error) {
	var s string
	switch n.Kind {
	case yaml.ScalarNode:
		v, err := literal(n.Value)
		if err != nil {
			return 0, err
		}
		s = v
		if i := strings.LastIndex(s, "/"); i >= 0 {
			if s[i+1:] != "tcp" {
				return 0, fmt.Errorf("%q: Tributary listens on TCP only", n.Value)
			}
			s = s[:i]
		}
		if i := strings.LastIndex(s, ":"); i >= 0 {
			s = s[i+1:]
		}
	case yaml.MappingNode:
		var long struct {
			Target   string `yaml:"target"`
			Protocol string `yaml:"protocol"`
		}
		if err := n.Decode(&long); err != nil {
			return 0, err
		}
		if long.Protocol != "" && long.Protocol != "tcp" {
			return 0, fmt.Errorf("target %s: Tributary listens on TCP only", long.Target)
		}
		s = long.Target
	default:
		return 0, errors.New("a port is a string or a map")
	}
	p, err := strconv.Atoi(s)
	if err != nil {
		return 0, fmt.Errorf("%q: only single container ports are understood here", s)
	}
	return p, nil
}

// volume reads one entry of a compose volumes section. A bind mount's
// source is a host path; a named volume's is the volume's name.
func volume(n yaml.Node) (source, target string, bind bool, err error) {
	switch n.Kind {
	case yaml.ScalarNode:
		s, err := literal(n.Value)
		if err != nil {
			return "", "", false, err
		}
		parts := strings.Split(s, ":")
		if len(parts) < 2 || len(parts) > 3 {
			return "", "", false, fmt.Errorf("%q: expected source:target[:mode]", s)
		}
		source, target = parts[0], parts[1]
		bind = strings.HasPrefix(source, ".") || strings.HasPrefix(source, "/") || strings.HasPrefix(source, "~")
	case yaml.MappingNode:
		var long struct {
			Type   string `yaml:"type"`
			Source string `yaml:"source"`
			Target string `yaml:"target"`
		}
		if err := n.Decode(&long); err != nil {
			return "", "", false, err
		}
		source, target, bind = long.Source, long.Target, long.Type == "bind"
	default:
		return "", "", false, errors.New("a volume is a string or a map")
	}
	return source, target, bind, nil
}

// hostPath rewrites a container path that a bind mount brings in from the
// host to that host path, so that the configuration can be loaded here.
func (d composeDeployment) hostPath(v string) string {
	for target, source := range d.mounts {
		if v == target {
			return source
		}
		if rest, ok := strings.CutPrefix(v, strings.TrimSuffix(target, "/")+"/"); ok {
			return filepath.Join(source, rest)
		}
	}
	return v
}

// check loads the tributary service's configuration as the container
// would and returns what is wrong with it.
func (d composeDeployment) check() []string {
	problems := slices.Clone(d.problems)
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	if d.entrypoint {
		bad("services.%s.entrypoint is set: this check reads command as the arguments of tributary", composeService)
	}

	// Load ignores environment variables it does not know, so a renamed
	// setting would go unnoticed there: every TRIBUTARY_* variable must
	// be one of the settings' names, or TRIBUTARY_CONFIG.
	known := map[string]bool{"TRIBUTARY_CONFIG": true}
	for _, s := range config.Settings() {
		for _, name := range s.EnvNames() {
			known[name] = true
		}
	}
	for _, k := range slices.Sorted(maps.Keys(d.env)) {
		if strings.HasPrefix(k, "TRIBUTARY_") && !known[k] {
			bad("environment variable %s: no Tributary setting has that name (see the configuration table in README.md)", k)
		}
	}

	args := make([]string, len(d.args))
	for i, a := range d.args {
		if name, v, ok := strings.Cut(a, "="); ok && strings.HasPrefix(name, "-") {
			args[i] = name + "=" + d.hostPath(v)
		} else {
			args[i] = d.hostPath(a)
		}
	}
	lookup := func(k string) (string, bool) {
		v, ok := d.env[k]
		if !ok || v == nil {
			return "", false
		}
		return d.hostPath(*v), true
	}
	// What `tributary check-config` runs, Kafka property check included.
	cfg, rest, err := config.Load(config.Options{Args: args, LookupEnv: lookup, Name: "tributary",
		CheckKafkaProperties: checkKafkaProperties})
	if err != nil {
		var ce *config.Error
		if !errors.As(err, &ce) {
			return append(problems, err.Error())
		}
		for _, p := range ce.Problems {
			bad("configuration: %s", p)
		}
		return problems
	}
	if len(rest) > 0 {
		bad("command: unexpected arguments %q (tributary would exit 2)", rest)
	}

	var bootstrap []string
	if cfg.Kafka.Embedded() {
		bad("kafka.bootstrap is not set: Tributary would start its embedded evaluation Kafka instead of using the compose file's")
	} else {
		bootstrap = strings.Split(cfg.Kafka.Bootstrap, ",")
	}
	for _, b := range bootstrap {
		b = strings.TrimSpace(b)
		host, _, err := net.SplitHostPort(b)
		if err != nil {
			bad("kafka.bootstrap %q: %v", b, err)
			continue
		}
		// A broker of this compose file must advertise, on the listener
		// Tributary connects to, the same address: librdkafka uses the
		// advertised one after the first request.
		if adv, ok := d.advertised[host]; ok && !strings.Contains(adv, "://"+b) {
			bad("kafka.bootstrap %q: service %s advertises %q, not this address", b, host, adv)
		}
	}

	var listening []int
	for _, l := range []struct{ key, addr string }{
		{"mqtt.addr", cfg.MQTT.Addr},
		{"mqtt.ws_addr", cfg.MQTT.WSAddr},
		{"mqtt.tls_addr", cfg.MQTT.TLSAddr},
		{"mqtt.wss_addr", cfg.MQTT.WSSAddr},
		{"http.addr", cfg.HTTP.Addr},
		{"http.tls_addr", cfg.HTTP.TLSAddr},
	} {
		if l.addr == "" {
			continue
		}
		host, p, err := net.SplitHostPort(l.addr)
		if err != nil {
			bad("%s %q: %v", l.key, l.addr, err)
			continue
		}
		port, _ := strconv.Atoi(p)
		listening = append(listening, port)
		if host != "" && host != "0.0.0.0" && host != "::" {
			bad("%s %q: inside a container a listener must bind every interface to be reachable through a published port", l.key, l.addr)
		}
		if !slices.Contains(d.published, port) {
			bad("%s %q: port %d is not published by services.%s.ports", l.key, l.addr, port, composeService)
		}
		if !slices.Contains(d.exposed, port) {
			bad("%s %q: port %d is not in the Dockerfile's EXPOSE", l.key, l.addr, port)
		}
	}
	for _, p := range d.published {
		if !slices.Contains(listening, p) {
			bad("services.%s.ports publishes %d, on which Tributary does not listen", composeService, p)
		}
	}
	return problems
}

// TestComposeFile checks the tributary service of compose/docker-compose.yml
// against the config package: every TRIBUTARY_* variable and flag it
// passes exists, the config file it mounts passes `tributary check-config`,
// Kafka is the compose file's own broker at the address that broker
// advertises, and every listener is reachable through a published port.
func TestComposeFile(t *testing.T) {
	d := readComposeDeployment(t, composeFilePath)
	if len(d.args) == 0 && len(d.env) == 0 {
		t.Fatalf("services.%s has neither command nor environment: nothing to check", composeService)
	}
	for _, p := range d.check() {
		t.Error(p)
	}
}

// TestComposeCheckCatchesRenames makes sure the check above can fail: each
// case changes the deployment as a rename in the config package would
// leave it, and expects a problem naming what changed.
func TestComposeCheckCatchesRenames(t *testing.T) {
	base := readComposeDeployment(t, composeFilePath)
	configFile := ""
	for i, a := range base.args {
		if a == "--config" && i+1 < len(base.args) {
			configFile = base.hostPath(base.args[i+1])
		}
	}
	if configFile == "" {
		t.Fatalf("services.%s.command passes no --config FILE; this test changes that file", composeService)
	}
	original, err := os.ReadFile(configFile)
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name   string
		change func(t *testing.T, d *composeDeployment)
		want   string
	}{
		{"environment variable", func(t *testing.T, d *composeDeployment) {
			d.env["TRIBUTARY_KAFKA_BOOTSTRAPS"] = d.env["TRIBUTARY_KAFKA_BOOTSTRAP"]
			delete(d.env, "TRIBUTARY_KAFKA_BOOTSTRAP")
		}, "TRIBUTARY_KAFKA_BOOTSTRAPS: no Tributary setting"},
		{"flag", func(t *testing.T, d *composeDeployment) {
			d.args = append(d.args, "--log-levels", "info")
		}, "log-levels"},
		{"config file key", func(t *testing.T, d *composeDeployment) {
			mountConfig(t, d, configFile, renamed(t, original, "topic_regex_list:", "topic_regexp_list:"))
		}, "topic_regexp_list"},
		{"config file not mounted", func(t *testing.T, d *composeDeployment) {
			d.mounts = map[string]string{}
		}, "reading config file"},
		{"kafka property", func(t *testing.T, d *composeDeployment) {
			mountConfig(t, d, configFile, renamed(t, original, "compression.type:", "compression.typ:"))
		}, "kafka.properties.compression.typ"},
		{"bootstrap not advertised", func(t *testing.T, d *composeDeployment) {
			v := "kafka:29092"
			if d.env["TRIBUTARY_KAFKA_BOOTSTRAP"] == nil || !strings.HasPrefix(*d.env["TRIBUTARY_KAFKA_BOOTSTRAP"], "kafka:") {
				t.Fatal("the compose file does not set TRIBUTARY_KAFKA_BOOTSTRAP to its kafka service, so this check checks nothing")
			}
			d.env["TRIBUTARY_KAFKA_BOOTSTRAP"] = &v
		}, "service kafka advertises"},
		{"listener on loopback", func(t *testing.T, d *composeDeployment) {
			v := "127.0.0.1:8080"
			d.env["TRIBUTARY_HTTP_ADDR"] = &v
		}, "must bind every interface"},
		{"listener not published", func(t *testing.T, d *composeDeployment) {
			v := ":1884"
			d.env["TRIBUTARY_MQTT_ADDR"] = &v
		}, "port 1884 is not published"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := base.clone()
			tc.change(t, &d)
			problems := d.check()
			if !slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, tc.want) }) {
				t.Errorf("no problem mentions %q; problems: %q", tc.want, problems)
			}
		})
	}
}

// renamed is the config file b with its first old replaced by new; the
// test fails if the file has no old, since the rename would then check
// nothing.
func renamed(t *testing.T, b []byte, old, new string) []byte {
	t.Helper()
	if !bytes.Contains(b, []byte(old)) {
		t.Fatalf("the mounted config file has no %q to rename", old)
	}
	return bytes.Replace(b, []byte(old), []byte(new), 1)
}

// mountConfig writes b to a file of its own and mounts that instead of
// hostFile.
func mountConfig(t *testing.T, d *composeDeployment, hostFile string, b []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), filepath.Base(hostFile))
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	for target, source := range d.mounts {
		if source == hostFile {
			d.mounts[target] = path
		}
	}
}
