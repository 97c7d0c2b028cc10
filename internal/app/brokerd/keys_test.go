package brokerd

import (
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/freifunkMUC/wgkex-go/internal/config"
)

// configKeys returns the koanf key of every setting of t, depth first: the fields of a struct one by one, a map
// (workers.<name>), a list or any other value as one key.
func configKeys(t reflect.Type, prefix string) []string {
	var keys []string
	for f := range t.Fields() {
		tag, _, _ := strings.Cut(f.Tag.Get("koanf"), ",")
		if tag == "" || tag == "-" {
			continue
		}
		key := prefix + tag
		if f.Type.Kind() == reflect.Struct {
			keys = append(keys, configKeys(f.Type, key+".")...)
			continue
		}
		keys = append(keys, key)
	}
	return keys
}

// TestEveryKeyClassified: every key of the configuration is either read only at start (restartOnly, a reload
// changing it is refused), applied by Reload (reloadable) or not read by the broker (ignored), exactly one of
// them; a new key that is in none fails here instead of being silently ignored by a reload. The lists name no key
// that does not exist.
func TestEveryKeyClassified(t *testing.T) {
	lists := map[string][]string{
		"restartOnly": slices.Sorted(maps.Keys(restartOnly(&config.Config{}))),
		"reloadable":  reloadable,
		"ignored":     ignored,
	}
	keys := configKeys(reflect.TypeFor[config.Config](), "")
	// in returns the entries of list that cover key: the key itself or a section above it.
	in := func(list []string, key string) []string {
		var out []string
		for _, e := range list {
			if key == e || strings.HasPrefix(key, e+".") {
				out = append(out, e)
			}
		}
		return out
	}
	for _, k := range keys {
		var where []string
		for name, list := range lists {
			for _, e := range in(list, k) {
				where = append(where, name+":"+e)
			}
		}
		switch slices.Sort(where); len(where) {
		case 0:
			t.Errorf("%s is neither restart-only nor reloadable nor ignored by the broker: add it to one list in reload.go", k)
		case 1:
		default:
			t.Errorf("%s is in more than one list: %v", k, where)
		}
	}
	for name, list := range lists {
		for _, e := range list {
			if !slices.ContainsFunc(keys, func(k string) bool { return k == e || strings.HasPrefix(k, e+".") }) {
				t.Errorf("%s names %s, which is no configuration key", name, e)
			}
		}
	}
	if len(keys) < 40 {
		t.Errorf("only %d keys found: %v", len(keys), keys)
	}
}
