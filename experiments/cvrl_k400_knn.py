"""kNN evaluation on Kinetics-400: the training split is the memory bank, the validation split the
queries; k = 200, temperature-weighted votes (InstDisc, SlowFast); one centre clip per video.
Cheap enough to follow a pretraining run checkpoint by checkpoint.

  python -m cvrl_tf.train --experiment=cvrl_k400_knn --workdir=/ckpt/cvrl_k400_knn \
      --init_checkpoint=/ckpt/cvrl_k400/checkpoints
"""

from _evaluation import knn
from _kinetics import K400_CLASSES, K400_TRAIN_PATTERN, K400_VAL_PATTERN


def get_config():
  return knn(K400_TRAIN_PATTERN, K400_VAL_PATTERN, K400_CLASSES)
