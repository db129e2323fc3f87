# handoff — fd-passing dispatcher daemon. `make help` lists the targets.

PORT     ?= 6001
WORKERS  ?= $(shell nproc 2>/dev/null || echo 2)
HOSTS    ?= 3
RUN_DIR  ?=
ARGS     ?=
PREFIX   ?= /usr/local
LISTEN   ?= 0.0.0.0:$(PORT)
CARGO    ?= cargo
RELEASE  := target/release

RUN_DIR_ARG := $(if $(RUN_DIR),--run-dir $(RUN_DIR),)
# handoff-master refuses to serve a non-loopback address as root unless told
# (--user NAME drops privileges; --allow-root says so): `make run` by root is
# a developer trying it, so it says so for them. Deployments: README.
ROOT_ARG := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: help build run master worker stats top cluster test test-paused deps lint fmt install clean
.PHONY: bench bench-quick bench-modes bench-modes-quick mutants mutants-workspace man

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'
	@echo "  variables: PORT=$(PORT) LISTEN=$(LISTEN) WORKERS=$(WORKERS) RUN_DIR=$(RUN_DIR) ARGS=$(ARGS) PREFIX=$(PREFIX) SAMPLE=$(SAMPLE) SHARD=$(SHARD)"

build: ## build release binaries into target/release
	$(CARGO) build --release --workspace --bins

run: build ## master + WORKERS workers on 0.0.0.0:PORT, in the foreground (Ctrl-C stops all); ARGS= adds flags
	$(RELEASE)/handoff-master --listen $(LISTEN) --workers $(WORKERS) $(RUN_DIR_ARG) $(ROOT_ARG) $(ARGS)

master: build ## the master alone (--workers 0); add workers with `make worker`
	$(RELEASE)/handoff-master --listen $(LISTEN) --workers 0 $(RUN_DIR_ARG) $(ROOT_ARG) $(ARGS)

worker: build ## one more worker joining the running master (run it in as many terminals as you like)
	$(RELEASE)/handoff-worker $(RUN_DIR_ARG) $(ARGS)

stats: ## master info and per-worker stats of the running master (handoff-ctl)
	@test -x $(RELEASE)/handoff-ctl || echo "building handoff-ctl (the first time takes a while)..." >&2
	@$(CARGO) build --release -q -p handoff-ctl
	@$(RELEASE)/handoff-ctl $(RUN_DIR_ARG) info
	@echo
	@$(RELEASE)/handoff-ctl $(RUN_DIR_ARG) workers

top: ## live view, once a second: conn/s, in flight, CPU % per process (Ctrl-C to quit)
	@test -x $(RELEASE)/handoff-ctl || echo "building handoff-ctl (the first time takes a while)..." >&2
	@$(CARGO) build --release -q -p handoff-ctl
	@$(RELEASE)/handoff-ctl $(RUN_DIR_ARG) top

cluster: build ## HOSTS handoff masters (WORKERS workers each, agent checks) behind HAProxy on 127.0.0.1:PORT, in the foreground (Ctrl-C stops all); ARGS= adds master flags
	scripts/cluster.sh --hosts $(HOSTS) --workers $(WORKERS) --port $(PORT) $(if $(ARGS),-- $(ARGS),)

test: deps ## install missing system tools (ab, haproxy, ...), build everything, run every test, and seconds-long smokes of the benchmark pipelines
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace
	@d=$$(mktemp -d) && scripts/compare.sh --smoke --out $$d; s=$$?; rm -rf $$d; exit $$s
	@$(MAKE) --no-print-directory bench-cluster-smoke
	@$(MAKE) --no-print-directory bench-scale-smoke

test-paused: ## the workspace's tests while every process is stopped and continued twice a second, as on a paused machine (EINTR); not in CI
	$(CARGO) build --workspace --bins --tests
	scripts/stop_continue.py --period 0.5 -- $(CARGO) test --workspace --no-fail-fast

deps: ## install the system packages the tests need, if missing (scripts/setup-ci.sh; apt, as root or with sudo)
	scripts/setup-ci.sh

lint: ## rustfmt --check and clippy -D warnings
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## format the code
	$(CARGO) fmt --all

install: build man ## copy the three binaries into PREFIX/bin, their man pages and shell completions under PREFIX/share (PREFIX=/usr/local)
	install -d $(PREFIX)/bin $(PREFIX)/share/man/man1 $(PREFIX)/share/bash-completion/completions $(PREFIX)/share/zsh/site-functions $(PREFIX)/share/fish/vendor_completions.d
	install -m 0755 $(RELEASE)/handoff-master $(RELEASE)/handoff-worker $(RELEASE)/handoff-ctl $(PREFIX)/bin/
	install -m 0644 target/docs/man/*.1 $(PREFIX)/share/man/man1/
	for b in handoff-master handoff-worker handoff-ctl; do \
	  install -m 0644 target/docs/completions/$$b.bash $(PREFIX)/share/bash-completion/completions/$$b; \
	  install -m 0644 target/docs/completions/$$b.zsh $(PREFIX)/share/zsh/site-functions/_$$b; \
	  install -m 0644 target/docs/completions/$$b.fish $(PREFIX)/share/fish/vendor_completions.d/$$b.fish; \
	done

man: build ## man pages and bash/zsh/fish completions of the three binaries, from their flags, into target/docs/
	for b in handoff-master handoff-worker handoff-ctl; do HANDOFF_GENERATE_DOCS=target/docs $(RELEASE)/$$b || exit 1; done
	@echo "man -l target/docs/man/handoff-master.1 to read one"

clean: ## remove build output
	$(CARGO) clean

bench: ## compare handoff with the article's Python servers and the reference master (≤ 7 min): results/<timestamp>/
	scripts/compare.sh

bench-quick: ## python-pool, refmaster-2 and handoff-2 only (≤ 60 s): results/<timestamp>-quick/
	scripts/compare.sh --quick

bench-modes: ## every --mode/--policy/--batch × workers × work vs a plain baseline and the reference master, and interleaved reuseport / reuseport-least pairs (about 11 min on 2 cores): results/<timestamp>-modes/
	scripts/compare.sh --suite modes

bench-modes-quick: ## the same, 2 workers, no simulated work, short (≤ 60 s): results/<timestamp>-modes-quick/
	scripts/compare.sh --suite modes --quick

.PHONY: bench-scale bench-scale-smoke
bench-scale: ## the scale curve: idle connections held to 40,000 beside a closed-loop run, and 2, 16, 64 workers (rr, least): master and worker cost, worker memory per held connection: results/<timestamp>-scale/
	scripts/compare.sh --suite scale

bench-scale-smoke: ## the same pipeline in seconds (debug build, a few hundred held; checks the outputs parse)
	@d=$$(mktemp -d) && scripts/compare.sh --suite scale --smoke --out $$d; s=$$?; rm -rf $$d; exit $$s

.PHONY: bench-cluster bench-cluster-smoke
bench-cluster: ## direct vs through HAProxy (shipped config) to 1 and 3 instances, interleaved, 3 reps: the L4 hop's CPU and latency per connection (≤ 5 min): results/<timestamp>-cluster/
	scripts/compare.sh --suite cluster

bench-cluster-smoke: ## the same pipeline in seconds (debug build, tiny window; checks the outputs parse)
	@d=$$(mktemp -d) && scripts/compare.sh --suite cluster --smoke --out $$d; s=$$?; rm -rf $$d; exit $$s

mutants: ## mutation testing (cargo-mutants, installed if missing) of proto, the master's and the worker's pure modules; slow, not in CI
	scripts/mutants.sh

SAMPLE ?= 20
SHARD ?= 0
mutants-workspace: ## every crate's mutants (1 in SAMPLE, sample SHARD) against the workspace's tests, e2e included; hours for SAMPLE=1; not in CI
	scripts/mutants.sh --workspace --sample $(SAMPLE) --shard $(SHARD)
