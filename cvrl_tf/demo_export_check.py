r"""`make demo`'s export step: call the exported SavedModel the way a user would, TensorFlow only.

  python -m cvrl_tf.demo_export_check --export_dir=demo_out/export \
      --tfrecords='demo_out/tfrecords/val-*' --output=demo_out/export_check.json

Loads the export with tf.saved_model.load, feeds the first `--num_videos` records of the held-out
shards to its `serve_examples` signature (decoding and multi-view averaging inside the model) and
one random float clip to `serving_default`, prints what it predicted and writes the result as JSON.
Nothing here imports the rest of cvrl_tf: it is the contract users rely on. Paths go through
tf.io.gfile, so the export, the shards and the output may be on gs:// as well.
"""

import json
import os

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("export_dir", None, "The SavedModel written by cvrl_tf.export.")
flags.DEFINE_string("tfrecords", None, "Glob of TFRecord shards to take records from.")
flags.DEFINE_integer("num_videos", 8, "Records to classify.")
flags.DEFINE_string("output", None, "Where to write the JSON result.")


def check(export_dir: str, tfrecords: str, num_videos: int) -> dict:
  """Calls the export; returns {"videos": [...], "accuracy", "features_dim", "label_names"}."""
  import numpy as np
  import tensorflow as tf

  model = tf.saved_model.load(export_dir)
  names = None
  if hasattr(model, "label_map_file"):  # the asset's path inside the loaded export
    with tf.io.gfile.GFile(model.label_map_file.asset_path.numpy().decode(), "rb") as f:
      # One label per line; labels may hold spaces, so split on \n.
      names = f.read().decode("utf-8").rstrip("\n").split("\n")
  files = sorted(tf.io.gfile.glob(tfrecords))
  if not files:
    raise FileNotFoundError(f"no TFRecord files match {tfrecords!r}")
  records = [r.numpy() for r in tf.data.TFRecordDataset(files).take(num_videos)]
  out = model.signatures["serve_examples"](examples=tf.constant(records))
  probabilities = out["probabilities"].numpy()
  labels = out["label"].numpy()
  predicted = probabilities.argmax(axis=1)
  videos = [{"video_id": vid.decode(), "label": int(label), "predicted": int(guess),
             "probability": float(p[guess]),
             "predicted_name": names[guess] if names else str(guess),
             "label_name": names[label] if names and label >= 0 else str(label)}
            for vid, label, guess, p in zip(out["video_id"].numpy(), labels, predicted,
                                            probabilities)]
  clip = tf.random.uniform([1, 8, 32, 32, 3], seed=0)
  features = model.signatures["serving_default"](video=clip)["features"].numpy()
  return {"videos": videos, "accuracy": float(np.mean(predicted == labels)),
          "features_dim": int(features.shape[-1]), "label_names": names}


def main(argv):
  del argv
  result = check(FLAGS.export_dir, FLAGS.tfrecords, FLAGS.num_videos)
  for video in result["videos"]:
    mark = "ok" if video["predicted"] == video["label"] else "--"
    print(f"  {mark} {video['video_id']}: predicted {video['predicted_name']!r} "
          f"(p={video['probability']:.2f}), labelled {video['label_name']!r}")
  print(f"the export classified {result['accuracy']:.0%} of {len(result['videos'])} held-out "
        f"videos right; serving_default gives {result['features_dim']}-d features")
  if FLAGS.output:  # written under a temporary name, then renamed into place
    import tensorflow as tf
    temporary = f"{FLAGS.output}.tmp-{os.getpid()}"
    with tf.io.gfile.GFile(temporary, "w") as f:
      f.write(json.dumps(result, indent=2))
    tf.io.gfile.rename(temporary, FLAGS.output, overwrite=True)
  return 0


if __name__ == "__main__":
  flags.mark_flags_as_required(["export_dir", "tfrecords"])
  app.run(main)
