"""kNN evaluation on Kinetics-600: the training split is the memory bank, the validation split the
queries; k = 200, temperature-weighted votes (InstDisc, SlowFast); one centre clip per video.
Cheap enough to follow a pretraining run checkpoint by checkpoint.

  python -m cvrl_tf.train --experiment=cvrl_k600_knn --workdir=/ckpt/cvrl_k600_knn \
      --init_checkpoint=/ckpt/cvrl_k600/checkpoints
"""

from _evaluation import knn
from _kinetics import K600_CLASSES, K600_TRAIN_PATTERN, K600_VAL_PATTERN


def get_config():
  return knn(K600_TRAIN_PATTERN, K600_VAL_PATTERN, K600_CLASSES)
