r"""Transfer: fine-tune every layer on HMDB-51 (paper, K400 pretraining: 65.4% top-1).

Build each of the three official splits from HMDB-51's own lists (testTrainMulti_7030_splits/):
`train` (rows marked 1) and `test` (rows marked 2) shards, labels in sorted class-name order
(HMDB-51 ships no class index; torchvision and mmaction2 sort too):

  for s in 1 2 3; do
    python dataset_tools/build_tfrecords.py --hmdb51_splits=testTrainMulti_7030_splits \
        --split_id=$s --video_dir=hmdb51_org --output_dir=/data/hmdb51_split$s
  done

This experiment reads split 1; every split trains on 70 videos a class (TRAIN_VIDEOS) and tests
on 30, so splits 2 and 3 override the files only:

  for s in 1 2 3; do
    python -m cvrl_tf.train --experiment=hmdb51_finetune --workdir=/ckpt/hmdb51_split$s \
        --init_checkpoint=/ckpt/cvrl_k400/checkpoints \
        --config=train_data.reader.file_pattern="/data/hmdb51_split$s/train-*-of-*.tfrecord" \
        --config=eval_data.reader.file_pattern="/data/hmdb51_split$s/test-*-of-*.tfrecord"
  done

Papers report split 1 or the mean top-1 of the three splits (say which); the mean, from each
run's metrics.json (local or gs://):

  python -c "from cvrl_tf import storage; t = [storage.read_json(f'/ckpt/hmdb51_split{s}/metrics.json')['top1'] for s in (1, 2, 3)]; print('top-1 per split', t, 'mean', sum(t) / 3)"

Our documented defaults (experiments/_evaluation.py): batch 64, LR 0.05, 50 epochs, 2-epoch
warm-up + cosine, dropout 0.5, weight decay 1e-4; 32 × 2-frame clips at 224; 10 × 3-view test.
"""

from _evaluation import finetune

TRAIN_PATTERN = "/data/hmdb51_split1/train-*-of-*.tfrecord"
TEST_PATTERN = "/data/hmdb51_split1/test-*-of-*.tfrecord"
TRAIN_VIDEOS = 3570        # 70 a class in each split (test: 1530)
NUM_CLASSES = 51


def get_config():
  return finetune(TRAIN_PATTERN, TEST_PATTERN, TRAIN_VIDEOS, NUM_CLASSES)
