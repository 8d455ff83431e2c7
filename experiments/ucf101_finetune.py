"""Transfer: fine-tune every layer on UCF-101 split 1 (paper, K400 pretraining: 92.1% top-1).

Build the TFRecords from the class folders first (the official split-1 lists as CSVs, see the
README), then:

  python -m cvrl_tf.train --experiment=ucf101_finetune --workdir=/ckpt/ucf101_finetune \
      --init_checkpoint=/ckpt/cvrl_k400/checkpoints

Our documented defaults (experiments/_evaluation.py): batch 64, LR 0.05, 50 epochs, 2-epoch
warm-up + cosine, dropout 0.5, weight decay 1e-4; 32 × 2-frame clips at 224; 10 × 3-view test.
"""

from _evaluation import finetune

TRAIN_PATTERN = "/data/ucf101_tfrecords/train-*-of-*.tfrecord"
TEST_PATTERN = "/data/ucf101_tfrecords/test-*-of-*.tfrecord"
TRAIN_VIDEOS = 9537        # split 1
NUM_CLASSES = 101


def get_config():
  return finetune(TRAIN_PATTERN, TEST_PATTERN, TRAIN_VIDEOS, NUM_CLASSES)
