// Package kernel is the Dataplane of a real gateway: WireGuard through wgctrl (kernel module or a userspace
// device's UAPI socket) and routes and VXLAN FDB entries through netlink. It is the only package that imports
// wgctrl and vishvananda/netlink.
package kernel
