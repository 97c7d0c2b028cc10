// Package contrib holds no code: it is the home of the operations files (systemd/: the units of the broker, its
// daily backup and the worker, with their sysusers.d and tmpfiles.d files; prometheus/: alert rules and their
// unit tests; grafana/: a dashboard) and of the tests that check them with systemd-analyze, systemd-sysusers,
// systemd-tmpfiles and promtool, and run the backup unit's commands against the real broker.
package contrib
