.PHONY: test run build

# The test suite, with real PostgreSQL, versitygw and mosquitto clients.
test:
	./scripts/test.sh

run:
	go run ./cmd/otad

build:
	CGO_ENABLED=0 go build -o bin/otad ./cmd/otad
