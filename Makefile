# Two commands on a fresh machine: `make demo` (train, translate, evaluate on the built-in
# corpus) and `make test`. Each installs what it needs first.
PYTHON ?= python
RUN ?= runs/demo

.PHONY: install demo test lint

install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install torch==2.13.0
	$(PYTHON) -m pip install -q -e ".[test]"

demo: install
	$(PYTHON) -m nmt.train hydra.run.dir=$(RUN)
	$(PYTHON) -m nmt.synthetic test src --lines 10 > $(RUN)/sample.src
	$(PYTHON) -m nmt.translate -m $(RUN)/checkpoints/best.pt -i $(RUN)/sample.src -o $(RUN)/sample.hyp
	paste $(RUN)/sample.src $(RUN)/sample.hyp
	$(PYTHON) -m nmt.evaluate checkpoint=$(RUN)/checkpoints/best.pt split=test hydra.run.dir=$(RUN)/eval

test: install
	$(PYTHON) -m pytest -q

lint:
	ruff check nmt tests scripts
