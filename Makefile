# The two commands: `make test` and `make demo`. Both create .venv/ when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT := demo_out

.PHONY: test demo venv clean

venv: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[cpu,dev]'
	touch $(STAMP)

# pytest exits 5 when it collected nothing: that is a failure here too.
test: $(STAMP)
	$(PY) -m pytest -q -ra

demo: $(STAMP)
	$(PY) dataset_tools/make_demo_videos.py --output_dir=$(DEMO_OUT)/videos
	$(PY) dataset_tools/build_tfrecords.py \
	    --csv=$(DEMO_OUT)/videos/train.csv,$(DEMO_OUT)/videos/validate.csv \
	    --video_dir=$(DEMO_OUT)/videos --output_dir=$(DEMO_OUT)/tfrecords \
	    --fps=25 --short_side=64 --num_shards=4
	$(PY) -m cvrl_tf.train --experiment=demo --workdir=$(DEMO_OUT)/pretrain \
	    --config=data.reader.file_pattern='$(DEMO_OUT)/tfrecords/train-*-of-*.tfrecord'

clean:
	rm -rf $(DEMO_OUT) build *.egg-info
