# wgkex: `make run` starts the broker on the example configuration; `make test` runs every test.
.PHONY: run test build bench

# Build, then exec the binary: it is make's own child, so a SIGTERM to make reaches it (go run would leave it behind).
run:
	go build -buildvcs=true -o bin/wgkex-broker ./cmd/wgkex-broker
	exec bin/wgkex-broker --config wgkex.yaml.example

test:
	bash .ci/test.sh

build:
	CGO_ENABLED=0 go build -buildvcs=true -trimpath -ldflags='-s -w' -o bin/ ./cmd/...

bench:
	go test -run '^$$' -bench . -benchmem ./...
