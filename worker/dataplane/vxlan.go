package dataplane

import (
	"crypto/md5"
	"strings"
)

// VXLANPort is the UDP port of the VXLAN link that Gluon nodes with gluon-mesh-vpn-wireguard-vxlan open to the
// gateway (the Linux default, not IANA's 4789).
const VXLANPort = 8472

// VNI returns the VXLAN network identifier a Gluon node derives from its domain's domain_seed:
// util.domain_seed_bytes("gluon-mesh-vpn-vxlan", 3), the first three bytes of
// md5("gluon-mesh-vpn-vxlan" + lower(domain_seed) + "1") read as a big-endian number. The gateway's vx-<domain>
// must use the same id, or it drops the node's mesh traffic.
func VNI(domainSeed string) uint32 {
	sum := md5.Sum([]byte("gluon-mesh-vpn-vxlan" + strings.ToLower(domainSeed) + "1"))
	return uint32(sum[0])<<16 | uint32(sum[1])<<8 | uint32(sum[2])
}
