package keylist

import (
	"errors"
	"fmt"

	"go.yaml.in/yaml/v3"

	"github.com/freifunkMUC/wgkex-go/internal/wire"
)

// Blocklist maps every blocked key to the reason given for it, which may be empty.
type Blocklist map[string]string

// Allowlist maps each restricted domain to the keys accepted there and their names, which may be empty.
type Allowlist map[string]map[string]string

// ParseBlocklist reads a blocklist file. It accepts the forms of the reference's draft (SPEC §6): a list whose items
// are a key or a one-entry mapping of a key to its reason, or a mapping of keys to reasons. A reason is a string, a
// mapping {reason: …}, or empty. An empty file is an empty list; an invalid key makes the whole file invalid.
//
//	# blocklist.yaml
//	- o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg=
//	- TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g=: stolen router, ticket 123
func ParseBlocklist(data []byte) (Blocklist, error) {
	root, err := document(data)
	if err != nil {
		return nil, err
	}
	if root == nil {
		return Blocklist{}, nil
	}
	out := Blocklist{}
	switch root.Kind {
	case yaml.SequenceNode:
		err = entries(root, out, reason)
	case yaml.MappingNode:
		err = pairs(root, out, reason)
	default:
		err = nodeError(root, "want a list of keys or a mapping of keys to reasons")
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

// ParseAllowlist reads an allowlist file: a mapping of domains to lists of keys, each item a key or a one-entry
// mapping of a key to a name. Only the domains listed are restricted; an empty list closes a domain. A domain
// that is not in domains (when domains is not nil) or an invalid key makes the whole file invalid.
//
//	# allowlist.yaml
//	ffmuc_welt:
//	  - o52Ge+Rpj4CUSitVag9mS7pSXUesNM0ESnvj/wwehkg=
//	  - TszFS3oFRdhsJP3K0VOlklGMGYZy+oFCtlaghXJqW2g=: supernode 1
func ParseAllowlist(data []byte, domains []string) (Allowlist, error) {
	root, err := document(data)
	if err != nil {
		return nil, err
	}
	if root == nil {
		return Allowlist{}, nil
	}
	if root.Kind != yaml.MappingNode {
		return nil, nodeError(root, "want a mapping of domains to lists of keys")
	}
	known := map[string]bool{}
	for _, d := range domains {
		known[d] = true
	}
	out := Allowlist{}
	for i := 0; i < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			return nil, nodeError(k, "a domain must be a string")
		}
		if domains != nil && !known[k.Value] {
			return nil, nodeError(k, fmt.Sprintf("domain %q is not configured", k.Value))
		}
		keys := map[string]string{}
		switch {
		case isNull(v):
		case v.Kind == yaml.SequenceNode:
			if err := entries(v, keys, name); err != nil {
				return nil, err
			}
		default:
			return nil, nodeError(v, fmt.Sprintf("domain %q: want a list of keys", k.Value))
		}
		out[k.Value] = keys
	}
	return out, nil
}

// document returns the top node of the file, nil for an empty file.
func document(data []byte) (*yaml.Node, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("parse YAML: %w", err)
	}
	if len(doc.Content) == 0 || isNull(doc.Content[0]) {
		return nil, nil
	}
	root := doc.Content[0]
	if root.Kind == yaml.AliasNode {
		return nil, nodeError(root, "aliases are not supported")
	}
	return root, nil
}

// entries adds the items of a list: a key, or a one-entry mapping of a key to a value read by val.
func entries(seq *yaml.Node, out map[string]string, val func(*yaml.Node) (string, error)) error {
	for _, item := range seq.Content {
		switch item.Kind {
		case yaml.ScalarNode:
			if err := add(out, item, ""); err != nil {
				return err
			}
		case yaml.MappingNode:
			if len(item.Content) != 2 {
				return nodeError(item, "want one key per list item")
			}
			if err := pairs(item, out, val); err != nil {
				return err
			}
		default:
			return nodeError(item, "want a key")
		}
	}
	return nil
}

// pairs adds the entries of a mapping of keys to values read by val.
func pairs(m *yaml.Node, out map[string]string, val func(*yaml.Node) (string, error)) error {
	for i := 0; i < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			return nodeError(k, "want a key")
		}
		s, err := val(v)
		if err != nil {
			return err
		}
		if err := add(out, k, s); err != nil {
			return err
		}
	}
	return nil
}

func add(out map[string]string, k *yaml.Node, value string) error {
	if err := wire.ValidateKey(k.Value); err != nil {
		return nodeError(k, err.Error())
	}
	out[k.Value] = value
	return nil
}

// reason reads a blocklist reason: empty, a string, or {reason: string}.
func reason(v *yaml.Node) (string, error) {
	switch {
	case isNull(v):
		return "", nil
	case v.Kind == yaml.ScalarNode:
		return v.Value, nil
	case v.Kind == yaml.MappingNode:
		for i := 0; i < len(v.Content); i += 2 {
			if v.Content[i].Value == "reason" {
				return name(v.Content[i+1])
			}
		}
		return "", nil
	}
	return "", nodeError(v, "want a reason")
}

// name reads a string value or nothing.
func name(v *yaml.Node) (string, error) {
	switch {
	case isNull(v):
		return "", nil
	case v.Kind == yaml.ScalarNode:
		return v.Value, nil
	}
	return "", nodeError(v, "want a string")
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.Tag == "!!null" }

// errSyntax is wrapped by every error about the structure of a file.
var errSyntax = errors.New("invalid list")

func nodeError(n *yaml.Node, msg string) error {
	return fmt.Errorf("%w: line %d: %s", errSyntax, n.Line, msg)
}
