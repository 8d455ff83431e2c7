"""Semi-supervised Kinetics-400 with 10% of the labels (paper: 58.1% top-1): fine-tune the whole
pretrained network on a class-balanced 10% of the training videos, chosen from
evaluation.subset_seed and written to <workdir>/label_subset.json; initial LR 0.2 (SPEC.md §2),
batch 256, 50 epochs over the subset (our defaults), 30-view test on the full validation split.

  python -m cvrl_tf.train --experiment=cvrl_k400_semi_10pct --workdir=/ckpt/k400_semi_10 \
      --init_checkpoint=/ckpt/cvrl_k400/checkpoints
"""

import dataclasses

from _evaluation import finetune
from _kinetics import K400_CLASSES, K400_TRAIN_PATTERN, K400_TRAIN_VIDEOS, K400_VAL_PATTERN


def get_config():
  config = finetune(K400_TRAIN_PATTERN, K400_VAL_PATTERN, K400_TRAIN_VIDEOS, K400_CLASSES,
                    batch_size=256, learning_rate=0.2, epochs=50, warmup_epochs=2)
  return dataclasses.replace(
      config, evaluation=dataclasses.replace(config.evaluation, label_fraction=0.1))
