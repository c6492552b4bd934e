# Tributary — common tasks. `make help` lists them.
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)
KAFKA    := scripts/kafka.sh
# An execution count, not a duration: with a duration, Go 1.26's fuzzing
# coordinator can fail a target with "context deadline exceeded" as the
# time runs out on a loaded machine, with no failing input (golang/go#75804,
# fixed in Go 1.27). A count has no deadline to race.
FUZZTIME ?= 50000x

.PHONY: help build run deps test vet test-kafka test-allocs check-compose fuzz bench clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## build bin/tributary
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/tributary ./cmd/tributary

run: ## run the bridge with the embedded Kafka (MQTT :1883, MQTT-over-WebSocket :8083, HTTP :8080, Kafka 127.0.0.1:9092)
	$(GO) run -ldflags "$(LDFLAGS)" ./cmd/tributary $(ARGS)

deps: ## install the test peers (mosquitto, mosquitto-clients, kcat, chromium; wscat and mqtt.js from e2e/package-lock.json), gcc for cgo, Java 17+ and Maven if missing
	scripts/install-deps.sh

# The Go files to check: git's list in a checkout; outside one (a source
# tarball, no git) every .go file under the tree. Never an empty list, on
# which gofmt would read stdin and wait.
vet: ## gofmt and go vet
	@files=$$(git ls-files '*.go' 2>/dev/null) || \
		files=$$(find . -name '*.go' -not -path './.git/*' -not -path '*/node_modules/*'); \
	if [ -z "$$files" ]; then echo "vet: found no Go files to check with gofmt" >&2; exit 1; fi; \
	out=$$(gofmt -l $$files) || exit 1; \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

test: deps vet ## unit and integration tests (race detector) against the embedded Kafka
	$(GO) test -race -count=1 -timeout 25m ./...

# One shell for the whole run, so that Kafka is stopped however it ends: a
# failed start, an empty bootstrap, failing tests or an interrupt (INT and
# TERM exit, which runs the EXIT trap). The recipe's status is the tests'.
test-kafka: deps ## the integration suite against a real Apache Kafka 4.x (KRaft) started from Maven Central jars
	trap '$(KAFKA) stop' EXIT; trap 'exit 130' INT; trap 'exit 143' TERM; \
		$(KAFKA) start || exit $$?; \
		bootstrap=$$($(KAFKA) bootstrap) || { echo "test-kafka: '$(KAFKA) bootstrap' failed" >&2; exit 1; }; \
		if [ -z "$$bootstrap" ]; then echo "test-kafka: '$(KAFKA) bootstrap' printed no address" >&2; exit 1; fi; \
		status=0; \
		TRIBUTARY_TEST_KAFKA_BOOTSTRAP=$$bootstrap $(GO) test -race -count=1 -timeout 25m ./cmd/tributary/ || status=$$?; \
		if [ $$status -ne 0 ]; then echo "== the broker's warnings, errors and fencing, last 60 lines"; \
			$(KAFKA) logs-problems || true; fi; \
		exit $$status

test-allocs: ## allocation guards that the race detector makes skip (sync.Pool drops items under it)
	$(GO) test -count=1 -run 'TestBuildRecordReusesRecords' ./broker/

check-compose: ## check compose/: its Tributary settings against the config package, and the file with docker compose config when Compose is installed
	$(GO) test -count=1 -run '^TestCompose' ./cmd/tributary/
	scripts/check-compose.sh

fuzz: ## run each fuzz test for FUZZTIME (executions, e.g. 50000x)
	$(GO) test ./mapping -run '^$$' -fuzz '^FuzzParseRegexList$$' -fuzztime $(FUZZTIME)
	$(GO) test ./mapping -run '^$$' -fuzz '^FuzzMap$$' -fuzztime $(FUZZTIME)
	$(GO) test ./mapping -run '^$$' -fuzz '^FuzzFastMatch$$' -fuzztime $(FUZZTIME)
	$(GO) test ./config -run '^$$' -fuzz '^FuzzDecodeYAML$$' -fuzztime $(FUZZTIME)
	$(GO) test ./websocket -run '^$$' -fuzz '^FuzzParseMessageID$$' -fuzztime $(FUZZTIME)
	$(GO) test ./websocket -run '^$$' -fuzz '^FuzzDecodeProduceFrame$$' -fuzztime $(FUZZTIME)
	$(GO) test ./websocket -run '^$$' -fuzz '^FuzzEncodeRecord$$' -fuzztime $(FUZZTIME)
	$(GO) test ./websocket -run '^$$' -fuzz '^FuzzEncodeProduceResult$$' -fuzztime $(FUZZTIME)
	$(GO) test ./auth -run '^$$' -fuzz '^FuzzLoadUsers$$' -fuzztime $(FUZZTIME)
	$(GO) test ./auth -run '^$$' -fuzz '^FuzzMQTTRule$$' -fuzztime $(FUZZTIME)
	$(GO) test ./broker -run '^$$' -fuzz '^FuzzGuardConn$$' -fuzztime $(FUZZTIME)

bench: ## MQTT → Kafka throughput against a native librdkafka producer, in one run
	$(GO) run ./cmd/tributary-bench $(ARGS)

clean: ## remove build output and the default data dir
	rm -rf bin data
