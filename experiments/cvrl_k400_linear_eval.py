"""Linear evaluation on Kinetics-400 (SPEC.md §2): frozen backbone and BN statistics, L2-normalised
pooled feature -> Dense; SGD momentum 0.9, LR 32 at batch 1024 (linear scaling), 100 epochs,
5-epoch warm-up + cosine, no weight decay; 32 × 2-frame clips at 224 with crop + flip; test on
10 clips × 3 crops of 256, softmax averaged.

  python -m cvrl_tf.train --experiment=cvrl_k400_linear_eval --workdir=/ckpt/cvrl_k400_linear \
      --init_checkpoint=/ckpt/cvrl_k600/checkpoints
"""

from _evaluation import linear_eval
from _kinetics import K400_CLASSES, K400_TRAIN_PATTERN, K400_TRAIN_VIDEOS, K400_VAL_PATTERN


def get_config():
  return linear_eval(K400_TRAIN_PATTERN, K400_VAL_PATTERN, K400_TRAIN_VIDEOS, K400_CLASSES)
