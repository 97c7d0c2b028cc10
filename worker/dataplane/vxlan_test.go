package dataplane

import "testing"

// TestVNI checks VNI against values computed with python3 from Gluon's util.domain_seed_bytes:
// int(md5(("gluon-mesh-vpn-vxlan" + seed.lower() + "1").encode()).hexdigest()[:6], 16).
func TestVNI(t *testing.T) {
	for _, tt := range []struct {
		seed string
		want uint32
	}{
		{"ffmuc_welt", 2281932},
		{"0123456789abcdef0123456789abcdef", 10650970},
		{"ABCDEF", 5190638}, // lower-cased first
		{"abcdef", 5190638},
	} {
		if got := VNI(tt.seed); got != tt.want {
			t.Errorf("VNI(%q) = %d, want %d", tt.seed, got, tt.want)
		}
	}
}
