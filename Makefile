# sockd — see README.md.

GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS := -s -w -X main.version=$(VERSION)

.PHONY: build test fuzz bench clean

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o sockd ./cmd/sockd

# The whole test suite, with the outside programs it drives (as root).
test:
	.ci/deps
	.ci/test

# Each fuzz target for FUZZTIME (minimisation kept short: some inputs are
# slow to minimise).
FUZZTIME ?= 30s
fuzz:
	$(GO) test -run='^$$' -fuzz=FuzzParseSockd -fuzztime=$(FUZZTIME) -fuzzminimizetime=2s ./grammar
	$(GO) test -run='^$$' -fuzz=FuzzSOCKS4Request -fuzztime=$(FUZZTIME) ./relay
	$(GO) test -run='^$$' -fuzz=FuzzSOCKS5Request -fuzztime=$(FUZZTIME) ./relay
	$(GO) test -run='^$$' -fuzz=FuzzIdentReply -fuzztime=$(FUZZTIME) ./ident

bench:
	$(GO) run ./bench

clean:
	rm -rf sockd dist
