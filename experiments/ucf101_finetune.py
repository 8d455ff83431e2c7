r"""Transfer: fine-tune every layer on UCF-101 (paper, K400 pretraining: 92.1% top-1).

Build each of the three official splits from UCF-101's own lists (ucfTrainTestlist/): `train`
and `test` shards, labels in classInd.txt's order:

  for s in 1 2 3; do
    python dataset_tools/build_tfrecords.py --ucf101_splits=ucfTrainTestlist --split_id=$s \
        --video_dir=UCF-101 --output_dir=/data/ucf101_split$s
  done

This experiment reads split 1; splits 2 and 3 override the files and the training-set size
(TRAIN_VIDEOS):

  train_videos=(- 9537 9586 9624)
  for s in 1 2 3; do
    python -m cvrl_tf.train --experiment=ucf101_finetune --workdir=/ckpt/ucf101_split$s \
        --init_checkpoint=/ckpt/cvrl_k400/checkpoints \
        --config=train_data.reader.file_pattern="/data/ucf101_split$s/train-*-of-*.tfrecord" \
        --config=eval_data.reader.file_pattern="/data/ucf101_split$s/test-*-of-*.tfrecord" \
        --config=train.num_train_examples=${train_videos[$s]}
  done

Papers report split 1 or the mean top-1 of the three splits (say which); the mean, from each
run's metrics.json (local or gs://):

  python -c "from cvrl_tf import storage; t = [storage.read_json(f'/ckpt/ucf101_split{s}/metrics.json')['top1'] for s in (1, 2, 3)]; print('top-1 per split', t, 'mean', sum(t) / 3)"

Our documented defaults (experiments/_evaluation.py): batch 64, LR 0.05, 50 epochs, 2-epoch
warm-up + cosine, dropout 0.5, weight decay 1e-4; 32 × 2-frame clips at 224; 10 × 3-view test.
"""

from _evaluation import finetune

TRAIN_PATTERN = "/data/ucf101_split1/train-*-of-*.tfrecord"
TEST_PATTERN = "/data/ucf101_split1/test-*-of-*.tfrecord"
TRAIN_VIDEOS = {1: 9537, 2: 9586, 3: 9624}   # rows of trainlist0N.txt (test: 3783, 3734, 3696)
NUM_CLASSES = 101


def get_config():
  return finetune(TRAIN_PATTERN, TEST_PATTERN, TRAIN_VIDEOS[1], NUM_CLASSES)
