#!/usr/bin/env bash
# The whole test suite: installs what the tests need (idempotently), then formatting, go mod tidy, vet, staticcheck,
# go test -race over every package (root-only tests included; under CI=true a skip is a failure) and a short
# run of every fuzz target. `make test` and .ci/run call this.
set -euo pipefail
cd "$(dirname "$0")/.."

export PATH="$PATH:/usr/sbin:/sbin"
STATICCHECK_VERSION=v0.8.2
FUZZTIME=${FUZZTIME:-5s}

need_pkgs=()
for tool in wg:wireguard-tools mosquitto_sub:mosquitto-clients mosquitto_pub:mosquitto-clients curl:curl \
	mosquitto:mosquitto ping:iputils-ping ip:iproute2 bridge:iproute2 nsenter:util-linux unshare:util-linux /usr/bin/python3:python3 \
	/usr/bin/chromium:chromium promtool:prometheus systemd-analyze:systemd systemd-sysusers:systemd \
	systemd-tmpfiles:systemd; do
	command -v "${tool%%:*}" >/dev/null 2>&1 || need_pkgs+=("${tool#*:}")
done
/usr/bin/python3 -c 'import paho.mqtt.client' >/dev/null 2>&1 || need_pkgs+=(python3-paho-mqtt)  # Debian's python, not a pyenv one
if [ ${#need_pkgs[@]} -gt 0 ]; then
	if [ "$(id -u)" = 0 ]; then
		echo "== installing ${need_pkgs[*]}"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq
		apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
	else
		echo "== not root: cannot install ${need_pkgs[*]}; the tests that need them will skip"
	fi
fi

GOBIN=$(go env GOPATH)/bin
if ! "$GOBIN/staticcheck" -version 2>/dev/null | grep -q "(${STATICCHECK_VERSION#v})"; then
	echo "== installing staticcheck $STATICCHECK_VERSION"
	go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION"
fi

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go'))
if [ -n "$unformatted" ]; then
	echo "gofmt needed:"; echo "$unformatted"; exit 1
fi
echo "== go mod tidy"
if ! go mod tidy -diff; then
	echo "go.mod or go.sum is not tidy: run go mod tidy"; exit 1
fi
echo "== go vet"
go vet ./...
echo "== staticcheck"
"$GOBIN/staticcheck" ./...

echo "== go test -race"
go test -race -count=1 ./...

echo "== fuzz ($FUZZTIME each)"
for pkg in $(go list ./...); do
	dir=$(go list -f '{{.Dir}}' "$pkg")
	for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/func //'); do
		echo "-- $pkg $target"
		# New inputs are minimized for at most a second (default 60 s, during which no input is tried: a short
		# run would spend its time there).
		fuzz() { go test -run '^$' -fuzz "^${target}\$" -fuzztime "$FUZZTIME" -fuzzminimizetime 1s "$pkg" >/tmp/wgkex-fuzz.log 2>&1; }
		# Go 1.26's fuzz coordinator can fail a target with a bare "context deadline exceeded" at the end of
		# -fuzztime, having found nothing (go.dev/issue/75804, fixed in Go 1.27): such a run is tried again, at
		# most twice. Anything else (a failing input written, a panic, a failed check) fails at once.
		for attempt in 1 2 3; do
			fuzz && break
			if [ $attempt = 3 ] || ! grep -q 'context deadline exceeded' /tmp/wgkex-fuzz.log ||
				grep -qE 'Failing input written|panic:|_test.go:[0-9]+:' /tmp/wgkex-fuzz.log; then
				cat /tmp/wgkex-fuzz.log; exit 1
			fi
			echo "   (the fuzz coordinator's deadline race, go.dev/issue/75804: again)"
		done
	done
done
echo "== all tests passed"
