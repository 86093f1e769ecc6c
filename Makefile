# The two commands of the README:
#   make quickstart   set up, then pretrain + fine-tune a tiny AAM on the bundled data (CPU, ~1 min)
#   make test         set up (with ssu, SLURM, munge), then run the test suite
#   make test-fast    the edit loop: the tests that need no training run, cluster or second process
.PHONY: quickstart test test-fast setup benchmark
setup:
	bash scripts/setup.sh

quickstart: setup
	.venv/bin/aamctl apply -f examples/quickstart.yaml --wait

test:
	bash scripts/setup.sh --system
	.venv/bin/python -m pytest tests

# the edit loop (under 2 minutes): no end-to-end runs, no SLURM cluster, no multi-process jobs
test-fast: setup
	.venv/bin/python -m pytest tests -m "not slow and not slurm and not ddp" -q

benchmark: setup
	.venv/bin/python benchmarks/train_throughput.py
