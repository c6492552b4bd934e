package config

import (
	"fmt"
	"os"
	"sort"
	"strings"
)

// expandSecrets replaces kafka.properties values of the form
// ${file:/path} (the file's contents, without a trailing newline) and
// ${env:NAME} (an environment variable), so that passwords can live in a
// mounted secret or the environment rather than in the config file.
// Each problem names the property.
func expandSecrets(c *Config, lookupEnv func(string) (string, bool)) []string {
	var problems []string
	keys := make([]string, 0, len(c.Kafka.Properties))
	for k := range c.Kafka.Properties {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := c.Kafka.Properties[k]
		if strings.HasPrefix(v, "$${") {
			c.Kafka.Properties[k] = v[1:] // an escaped literal "${"
			continue
		}
		if !strings.HasPrefix(v, "${") || !strings.HasSuffix(v, "}") {
			continue
		}
		ref := v[2 : len(v)-1]
		kind, arg, ok := strings.Cut(ref, ":")
		switch {
		case ok && kind == "file" && arg != "":
			b, err := os.ReadFile(arg)
			if err != nil {
				problems = append(problems, fmt.Sprintf("kafka.properties.%s: reading %s: %v", k, v, unwrapPath(err)))
				continue
			}
			secret := strings.TrimRight(string(b), "\r\n")
			if secret == "" {
				// Kafka would refuse the login later, without saying why.
				problems = append(problems, fmt.Sprintf("kafka.properties.%s: %s is empty; it must hold the value", k, v))
				continue
			}
			c.Kafka.Properties[k] = secret
		case ok && kind == "env" && arg != "":
			s, found := lookupEnv(arg)
			if !found {
				problems = append(problems, fmt.Sprintf("kafka.properties.%s: %s: environment variable %s is not set", k, v, arg))
				continue
			}
			c.Kafka.Properties[k] = s
		default:
			// The value is not echoed: it may be a password.
			problems = append(problems, fmt.Sprintf("kafka.properties.%s: a value in ${...} must be ${file:/path} or ${env:NAME} (write $${ for a value that starts with ${)", k))
		}
	}
	return problems
}

func unwrapPath(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}
