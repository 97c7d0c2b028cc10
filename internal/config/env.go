package config

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
)

// envOverrides turns WGKEX_-prefixed environment lines into a nested map of overrides. The variable name is the key
// path in upper case with "_" between levels: WGKEX_MQTT_PASSWORD, WGKEX_BROKER_LISTEN_PORT, WGKEX_EXTERNALNAME.
// Lists (WGKEX_DOMAINS, WGKEX_DOMAIN_PREFIXES, WGKEX_KEY_WHITELIST) are separated by commas or spaces, as the
// reference's docker entrypoint takes them. Variables that name no key (WGKEX_CONFIG_FILE, WGKEX_DEBUG) are ignored.
func envOverrides(environ []string) (map[string]any, error) {
	leaves := map[string]leaf{}
	collectLeaves(reflect.TypeOf(Config{}), nil, leaves)
	out := map[string]any{}
	var problems []string
	for _, kv := range environ {
		name, value, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(name, envPrefix) {
			continue
		}
		l, ok := leaves[name]
		if !ok {
			continue
		}
		v, err := l.convert(value)
		if err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", name, err))
			continue
		}
		setPath(out, l.path, v)
	}
	if len(problems) > 0 {
		return nil, &Error{Problems: problems}
	}
	return out, nil
}

type leaf struct {
	path []string
	kind reflect.Type
}

func (l leaf) convert(s string) (any, error) {
	switch {
	case l.kind == durationType:
		return s, nil
	case l.kind == reflect.TypeOf([]MQTTListener(nil)):
		var out []any
		for _, a := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' }) {
			out = append(out, map[string]any{"address": a})
		}
		return out, nil
	case l.kind.Kind() == reflect.Slice && l.kind.Elem().Kind() == reflect.String:
		f := strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' })
		out := make([]any, len(f))
		for i, x := range f {
			out[i] = x
		}
		return out, nil
	case l.kind.Kind() == reflect.String:
		return s, nil
	case l.kind.Kind() == reflect.Int:
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("%q is not an integer", s)
		}
		return n, nil
	case l.kind.Kind() == reflect.Bool:
		b, err := strconv.ParseBool(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("%q is not a boolean", s)
		}
		return b, nil
	}
	return nil, fmt.Errorf("cannot be set from the environment")
}

// collectLeaves records every scalar or string-list key of t under its environment variable name.
func collectLeaves(t reflect.Type, path []string, out map[string]leaf) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("koanf")
		if tag == "" || tag == "-" {
			continue
		}
		p := append(append([]string(nil), path...), tag)
		ft := f.Type
		switch {
		case ft.Kind() == reflect.Struct:
			collectLeaves(ft, p, out)
		case ft.Kind() == reflect.Map, ft.Kind() == reflect.Interface, ft.Kind() == reflect.Pointer:
			// workers.<name> and logging_config stay file-only.
		case ft == reflect.TypeOf([]MQTTListener(nil)):
			// WGKEX_BROKER_MQTT_LISTENERS=0.0.0.0:1883,[::]:1883 gives plain listeners; TLS ones need the file.
			out[envPrefix+strings.ToUpper(strings.Join(p, "_"))] = leaf{path: p, kind: ft}
		case ft.Kind() == reflect.Slice && ft.Elem().Kind() != reflect.String:
			// other lists of structs stay file-only.
		default:
			out[envPrefix+strings.ToUpper(strings.Join(p, "_"))] = leaf{path: p, kind: ft}
		}
	}
}

func setPath(m map[string]any, path []string, v any) {
	for _, p := range path[:len(path)-1] {
		next, ok := m[p].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[p] = next
		}
		m = next
	}
	m[path[len(path)-1]] = v
}
