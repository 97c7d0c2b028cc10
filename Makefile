# wgkex: `make run` starts the broker on the example configuration; `make test` runs every test.
.PHONY: run test build bench benchmarks

# Build, then exec the binary: it is make's own child, so a SIGTERM to make reaches it (go run would leave it behind).
# --version names this commit: from Go's build info where the checkout has a .git folder, else (a git worktree,
# a source tree without .git) from the -X flag.
COMMIT := $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS := -X github.com/freifunkMUC/wgkex-go/internal/app/cli.commit=$(COMMIT)

run:
	go build -buildvcs=auto -ldflags='$(LDFLAGS)' -o bin/wgkex-broker ./cmd/wgkex-broker
	exec bin/wgkex-broker --config wgkex.yaml.example

test:
	bash .ci/test.sh

build:
	CGO_ENABLED=0 go build -buildvcs=auto -trimpath -ldflags='-s -w $(LDFLAGS)' -o bin/ ./cmd/...

# The broker's v2 throughput as a share of a bare net/http server's, side by side (bench/run; installs wrk).
bench:
	bench/run

# Every Go benchmark of the repository.
benchmarks:
	go test -run '^$$' -bench . -benchmem ./...
