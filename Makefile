# sockd — see README.md.

GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS := -s -w -X main.version=$(VERSION)

.PHONY: build test fuzz fuzz-long bench clean man deb

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o sockd ./cmd/sockd

# The whole test suite, with the outside programs it drives (as root).
test:
	.ci/deps
	.ci/test

# Each fuzz target for FUZZTIME (minimisation kept short: some inputs are
# slow to minimise).
FUZZTIME ?= 30s
FUZZ_TARGETS := "FuzzParseSockd ./grammar" "FuzzParseSocks ./grammar" "FuzzParseSrelay ./grammar" \
	"FuzzParseInterfaces ./grammar" "FuzzSockdFastPath ./grammar" "FuzzSOCKS4Request ./relay/internal/wire" \
	"FuzzSOCKS5Request ./relay/internal/wire" "FuzzUDPHeader ./relay/internal/wire" \
	"FuzzReply ./relay/internal/wire" "FuzzIdentReply ./ident"
fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		set -- $$t; echo "== $$1"; \
		$(GO) test -run='^$$' -fuzz="^$$1\$$" -fuzztime=$(FUZZTIME) -fuzzminimizetime=2s $$2; \
	done

# Every fuzz target for FUZZEXECS executions (10 million: an hour or more
# for the grammars on two cores). Each target's last progress line, with
# its executions, goes to fuzz-long.log; a crasher stops the run and is
# written under the package's testdata/fuzz.
FUZZEXECS ?= 10000000
fuzz-long:
	@: >fuzz-long.log; for t in $(FUZZ_TARGETS); do \
		set -- $$t; echo "== $$1"; \
		$(GO) test -run='^$$' -fuzz="^$$1\$$" -fuzztime=$(FUZZEXECS)x -fuzzminimizetime=10s $$2 >fuzz-$$1.out 2>&1; st=$$?; \
		tail -n 20 fuzz-$$1.out; \
		echo "$$1 exit=$$st $$(grep -E '^fuzz: elapsed' fuzz-$$1.out | tail -n 1)" >>fuzz-long.log; rm -f fuzz-$$1.out; \
		[ $$st -eq 0 ] || { cat fuzz-long.log; exit 1; }; \
	done; cat fuzz-long.log

bench:
	$(GO) run ./bench

# Packaging (packaging/, checked by .ci/packaging). The tools run with
# `go run` at fixed versions and stay out of go.mod: nfpm v2.46 and later
# cannot be fetched here, and its dependencies would bloat go.sum.
MD2MAN := $(GO) run github.com/cpuguy83/go-md2man/v2@v2.0.7
NFPM := $(GO) run github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2
MANPAGES := sockd.8 sockd.conf.5 socks.conf.5
# Target architecture, in Go's names (nfpm maps them to Debian's).
DEB_ARCH ?= $(shell $(GO) env GOARCH)
# VERSION (git describe) made into a Debian upstream version: v1.2.3 →
# 1.2.3; v1.2.3-4-gabc1234 → 1.2.3+4.gabc1234; -dirty → .dirty; a
# pre-release v1.2.3-rc1 → 1.2.3~rc1; no tag (a bare hash, or devel) →
# 0.0.0~git.HASH. The ~ forms sort before the release they lead to.
DEB_VERSION ?= $(shell echo '$(VERSION)' | sed -E 's/^v([0-9])/\1/; s/-dirty$$/.dirty/; s/-([0-9]+)-g([0-9a-f]+)((\.dirty)?)$$/+\1.g\2\3/; /^[0-9]+\.[0-9]/!s/^/0.0.0~git./; s/-/~/g; s/[^A-Za-z0-9.+~]/./g')

# Time stamp of the files in the .deb: the last commit's, so that a clean
# tree gives the same package twice.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null)

# Man pages: packaging/man/*.md → dist/man/* (roff) and dist/man/*.gz.
man:
	mkdir -p dist/man
	for p in $(MANPAGES); do \
		$(MD2MAN) -in packaging/man/$$p.md -out dist/man/$$p && \
		gzip -9nc dist/man/$$p >dist/man/$$p.gz || exit 1; \
	done

# dist/sockd_VERSION-1_ARCH.deb: a static binary, the units, the man pages,
# /etc/sockd.conf as a conffile (packaging/nfpm.yaml).
deb: man
	CGO_ENABLED=0 GOARCH=$(DEB_ARCH) $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o dist/sockd ./cmd/sockd
	rm -f dist/sockd_*.deb
	SOCKD_DEB_VERSION='$(DEB_VERSION)' SOCKD_DEB_ARCH='$(DEB_ARCH)' SOURCE_DATE_EPOCH='$(SOURCE_DATE_EPOCH)' \
		$(NFPM) package -f packaging/nfpm.yaml -p deb -t dist/

clean:
	rm -rf sockd dist
