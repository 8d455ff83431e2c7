"""Transfer: fine-tune every layer on HMDB-51 split 1 (paper, K400 pretraining: 65.4% top-1).

Build the TFRecords from the class folders first (the official split-1 lists as CSVs, see the
README), then:

  python -m cvrl_tf.train --experiment=hmdb51_finetune --workdir=/ckpt/hmdb51_finetune \
      --init_checkpoint=/ckpt/cvrl_k400/checkpoints

Our documented defaults (experiments/_evaluation.py): batch 64, LR 0.05, 50 epochs, 2-epoch
warm-up + cosine, dropout 0.5, weight decay 1e-4; 32 × 2-frame clips at 224; 10 × 3-view test.
"""

from _evaluation import finetune

TRAIN_PATTERN = "/data/hmdb51_tfrecords/train-*-of-*.tfrecord"
TEST_PATTERN = "/data/hmdb51_tfrecords/test-*-of-*.tfrecord"
TRAIN_VIDEOS = 3570        # split 1
NUM_CLASSES = 51


def get_config():
  return finetune(TRAIN_PATTERN, TEST_PATTERN, TRAIN_VIDEOS, NUM_CLASSES)
