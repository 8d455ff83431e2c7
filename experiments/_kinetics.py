"""Shared numbers of the Kinetics experiments (not an experiment itself: the name starts with _).

Dataset sizes are the usable videos of the reference release's TFRecords (SPEC.md §2); your own
build may have fewer (missing downloads): take `splits.train.videos` from its dataset_info.json.
"""

K400_TRAIN_VIDEOS = 215_570
K400_VAL_VIDEOS = 17_706
K600_TRAIN_VIDEOS = 366_016
K600_VAL_VIDEOS = 27_780

# Where `dataset_tools/build_tfrecords.py --output_dir=...` wrote the shards; override with
# --config=data.reader.file_pattern=...
K400_TRAIN_PATTERN = "/data/kinetics400_tfrecords/train-*-of-*.tfrecord"
K600_TRAIN_PATTERN = "/data/kinetics600_tfrecords/train-*-of-*.tfrecord"
K400_VAL_PATTERN = "/data/kinetics400_tfrecords/val-*-of-*.tfrecord"
K600_VAL_PATTERN = "/data/kinetics600_tfrecords/val-*-of-*.tfrecord"
K400_CLASSES = 400
K600_CLASSES = 600
