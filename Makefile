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

# pytest exits 5 when it collected nothing: that is a failure here too. Two processes, a test
# file each (module fixtures are built once): 16 instead of 26 minutes on 2 cores, because most
# of a test's time is single-threaded (interpreter and TensorFlow start-up, tf.data, tracing).
# --no-loadscope-reorder: the files go out longest first (tests/conftest.py), not sorted by how
# many tests they hold, which handed the 5-minute file of 3 tests out last, to run alone.
test: $(STAMP)
	$(PY) -m pytest -q -ra -n 2 --dist loadfile --no-loadscope-reorder

# The whole library on the embedded default, each step resumable: videos -> TFRecords ->
# CVRL pretraining -> linear eval and kNN of the pretrained and of a random backbone -> export ->
# summary (demo_out/summary.json, summary.png).
DEMO_TRAIN := $(DEMO_OUT)/tfrecords/train-*-of-*.tfrecord
DEMO_VAL := $(DEMO_OUT)/tfrecords/val-*-of-*.tfrecord
DEMO_DATA := --config=train_data.reader.file_pattern='$(DEMO_TRAIN)' \
	    --config=eval_data.reader.file_pattern='$(DEMO_VAL)'
DEMO_KNN_DATA := --config=bank_data.reader.file_pattern='$(DEMO_TRAIN)' \
	    --config=eval_data.reader.file_pattern='$(DEMO_VAL)'
RANDOM := --config=evaluation.allow_random_backbone=true

demo: $(STAMP)
	mkdir -p $(DEMO_OUT) && date +%s > $(DEMO_OUT)/.started_at
	@echo "== 1/7 generating the demo videos"
	$(PY) dataset_tools/make_demo_videos.py --output_dir=$(DEMO_OUT)/videos
	@echo "== 2/7 building TFRecords"
	$(PY) dataset_tools/build_tfrecords.py \
	    --csv=$(DEMO_OUT)/videos/train.csv,$(DEMO_OUT)/videos/validate.csv \
	    --video_dir=$(DEMO_OUT)/videos --output_dir=$(DEMO_OUT)/tfrecords \
	    --fps=25 --short_side=64 --num_shards=4
	@echo "== 3/7 CVRL pretraining"
	$(PY) -m cvrl_tf.train --experiment=demo --workdir=$(DEMO_OUT)/pretrain \
	    --config=data.reader.file_pattern='$(DEMO_TRAIN)'
	@echo "== 4/7 linear evaluation: pretrained backbone, then a random one"
	$(PY) -m cvrl_tf.train --experiment=demo_linear_eval --workdir=$(DEMO_OUT)/linear_eval \
	    --init_checkpoint=$(DEMO_OUT)/pretrain/checkpoints $(DEMO_DATA)
	$(PY) -m cvrl_tf.train --experiment=demo_linear_eval \
	    --workdir=$(DEMO_OUT)/linear_eval_random $(RANDOM) $(DEMO_DATA)
	@echo "== 5/7 kNN evaluation: pretrained backbone, then a random one"
	$(PY) -m cvrl_tf.train --experiment=demo_knn --workdir=$(DEMO_OUT)/knn \
	    --init_checkpoint=$(DEMO_OUT)/pretrain/checkpoints $(DEMO_KNN_DATA)
	$(PY) -m cvrl_tf.train --experiment=demo_knn --workdir=$(DEMO_OUT)/knn_random \
	    $(RANDOM) $(DEMO_KNN_DATA)
	@echo "== 6/7 exporting the linear classifier as a SavedModel, and calling it"
	$(PY) -m cvrl_tf.export --workdir=$(DEMO_OUT)/linear_eval --export_dir=$(DEMO_OUT)/export \
	    --overwrite
	$(PY) -m cvrl_tf.demo_export_check --export_dir=$(DEMO_OUT)/export \
	    --tfrecords='$(DEMO_VAL)' --output=$(DEMO_OUT)/export_check.json
	@echo "== 7/7 summary"
	$(PY) -m cvrl_tf.demo_report --demo_out=$(DEMO_OUT) \
	    --started_at=$$(cat $(DEMO_OUT)/.started_at) --export_check=$(DEMO_OUT)/export_check.json

clean:
	rm -rf $(DEMO_OUT) build *.egg-info
