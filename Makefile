# The two commands of the README:
#   make quickstart   set up, then pretrain + fine-tune a tiny AAM on the bundled data (CPU, ~1 min)
#   make test         set up (with ssu, SLURM, munge), then run the test suite
.PHONY: quickstart test setup benchmark
setup:
	bash scripts/setup.sh

quickstart: setup
	.venv/bin/aamctl apply -f examples/quickstart.yaml --wait

test:
	bash scripts/setup.sh --system
	.venv/bin/python -m pytest tests

benchmark: setup
	.venv/bin/python benchmarks/train_throughput.py
