# wgkex: `make run` starts the broker on the example configuration; `make test` runs every test.
.PHONY: run test build bench

run:
	go run ./cmd/wgkex-broker --config wgkex.yaml.example

test:
	bash .ci/test.sh

build:
	CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o bin/ ./cmd/...

bench:
	go test -run '^$$' -bench . -benchmem ./...
