// Package e2e holds the end-to-end tests: broker, embedded MQTT and workers together, with userspace WireGuard
// devices in network namespaces, real WireGuard clients, and the real binaries where a process must die.
package e2e
