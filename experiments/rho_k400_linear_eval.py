"""Linear evaluation on Kinetics-400 of a ρ-SSL Slow-R50 backbone (rho_*_k400*.py), the study's
protocol (SlowFast configs/contrastive_ssl/linear_k400_Slow_8x8_R50_syn0.yaml): a Dense on the
frozen backbone's pooled feature, SGD momentum 0.9, learning rate 4.0 at batch 512 (0.5 × 8
machines; linear scaling), no weight decay, 60 epochs, 8-epoch linear warm-up + cosine; 8 × 8
clips (records built with --fps=30, see _rho_ssl.py) at 224 with a VGG-style crop + flip; test
on 10 clips × 3 crops of 256, softmax averaged (the same 30 views as the paper).

  python -m cvrl_tf.train --experiment=rho_k400_linear_eval --workdir=/ckpt/rho_moco_k400_linear \
      --init_checkpoint=/ckpt/rho_moco_k400/checkpoints

The same config evaluates every objective's backbone (all four pretrain the same Slow-R50).
Departures from the code's protocol:
- The feature goes to the Dense as it is (no L2 normalisation, no BN: the code's
  ResNetBasicHead), but the backbone's BNs are frozen with their pretraining statistics; the code
  only detaches the feature (DETACH_FINAL_FC) and keeps the backbone in training mode, so its BNs
  normalise with batch statistics and re-estimate their moving averages on the labelled clips.
- The crop: the code resizes the short side to U[256, 320] and takes a random 224² square. Our
  records are stored at one short side (256 by default), so the same square is a random resized
  crop with aspect 1 and area (224/s)² / r of the frame, s in [256, 320], r its long / short
  side: [0.37, 0.57] at 4:3, [0.28, 0.43] at 16:9; we draw from [0.28, 0.57].
- Warm-up from 0 to 4.0, then a cosine over the remaining 52 epochs (the code: an unshifted
  60-epoch cosine reached at epoch 8); no Nesterov; 8 frames exactly 8 apart (the code: 9).
"""

import dataclasses

from cvrl_tf import config as cfg

import _rho_ssl
from _evaluation import linear_eval
from _kinetics import K400_CLASSES, K400_TRAIN_PATTERN, K400_TRAIN_VIDEOS, K400_VAL_PATTERN


def get_config() -> cfg.ClassificationExperimentConfig:
  config = linear_eval(K400_TRAIN_PATTERN, K400_VAL_PATTERN, K400_TRAIN_VIDEOS, K400_CLASSES)
  batch_size = 512                       # 64 per machine × 8
  clip = dict(num_frames=8, stride=8)
  return dataclasses.replace(
      config,
      train_data=dataclasses.replace(
          config.train_data, crop_size=224, area_range=(0.28, 0.57), aspect_ratio_range=(1.0, 1.0),
          flip_probability=0.5, **clip),
      eval_data=dataclasses.replace(config.eval_data, num_clips=10, num_crops=3, short_side=256,
                                    crop_size=256, **clip),
      # The pretraining's backbone (the head is not used); BN frozen, so no synchronisation.
      model=cfg.ModelConfig(**dict(_rho_ssl.SLOW_R50, sync_batch_norm=False)),
      classifier=cfg.ClassifierConfig(normalize=False, batch_norm=False, dropout_rate=0.0),
      optimizer=cfg.OptimizerConfig(
          name="sgd", base_learning_rate=4.0,   # lr = 4.0 × batch_size / 512
          reference_batch_size=512, momentum=0.9, weight_decay=0.0,
          schedule="warmup_cosine", warmup_epochs=8),
      train=dataclasses.replace(config.train, global_batch_size=batch_size, epochs=60))
