package config

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/go-viper/mapstructure/v2"
	"github.com/knadh/koanf/maps"
	"github.com/knadh/koanf/providers/env/v2"
)

// envProvider reads the WGKEX_-prefixed lines of environ as overrides. The variable name is the key path in upper
// case with "_" between levels: WGKEX_MQTT_PASSWORD, WGKEX_BROKER_LISTEN_PORT, WGKEX_EXTERNALNAME. Lists
// (WGKEX_DOMAINS, WGKEX_DOMAIN_PREFIXES, WGKEX_KEY_WHITELIST) are separated by commas or spaces, as the reference's
// docker entrypoint takes them; WGKEX_BROKER_MQTT_LISTENERS=0.0.0.0:1883,[::]:1883 gives plain listeners (TLS
// ones need the file). Variables that name no key (WGKEX_CONFIG_FILE, WGKEX_DEBUG) and keys that only the file can
// set (workers, logging_config) are reported in *problems, like values that do not convert.
func envProvider(environ []string, problems *[]string) (*env.Env, error) {
	keys, err := envKeys()
	if err != nil {
		return nil, err
	}
	return env.Provider("/", env.Opt{
		Prefix:      envPrefix,
		EnvironFunc: func() []string { return environ },
		TransformFunc: func(name, value string) (string, any) {
			k, ok := keys[name]
			if !ok {
				return "", nil
			}
			v, err := convertEnv(k.zero, value)
			if err != nil {
				*problems = append(*problems, fmt.Sprintf("%s: %v", name, err))
				return "", nil
			}
			return k.path, v
		},
	}), nil
}

// envKey is a configuration key that the environment may set: its koanf path and the zero value of its type.
type envKey struct {
	path string
	zero any
}

// envKeys maps every variable name to the key it sets. The keys are those of Config, read through the same koanf
// tags that decode it. Where two paths give one name (log_level and log.level), the nested one wins.
func envKeys() (map[string]envKey, error) {
	var tree map[string]any
	d, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{TagName: "koanf", Result: &tree})
	if err != nil {
		return nil, fmt.Errorf("list configuration keys: %w", err)
	}
	if err := d.Decode(Config{}); err != nil {
		return nil, fmt.Errorf("list configuration keys: %w", err)
	}
	flat, _ := maps.Flatten(tree, nil, "/")
	paths := make([]string, 0, len(flat))
	for p := range flat {
		paths = append(paths, p)
	}
	// Fewer levels first, so that a nested path overwrites a flat one with the same name.
	sort.Slice(paths, func(i, j int) bool {
		li, lj := strings.Count(paths[i], "/"), strings.Count(paths[j], "/")
		if li != lj {
			return li < lj
		}
		return paths[i] < paths[j]
	})
	out := make(map[string]envKey, len(paths))
	for _, p := range paths {
		name := envPrefix + strings.ToUpper(strings.ReplaceAll(p, "/", "_"))
		out[name] = envKey{path: p, zero: flat[p]}
	}
	return out, nil
}

// convertEnv turns the text of a variable into a value of the key's type. Durations stay text for durationHook.
func convertEnv(zero any, s string) (any, error) {
	switch zero.(type) {
	case string, Duration:
		return s, nil
	case int:
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("%q is not an integer", s)
		}
		return n, nil
	case bool:
		b, err := strconv.ParseBool(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("%q is not a boolean", s)
		}
		return b, nil
	case []string:
		var out []any
		for _, f := range splitList(s) {
			out = append(out, f)
		}
		return out, nil
	case []MQTTListener:
		var out []any
		for _, a := range splitList(s) {
			out = append(out, map[string]any{"address": a})
		}
		return out, nil
	}
	return nil, fmt.Errorf("cannot be set from the environment")
}

func splitList(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' })
}
