"""The heads on the pooled backbone feature: the contrastive projection head and the linear classifier.

  ProjectionHead    [B, D] -> N × [Dense -> BN -> ReLU] -> Dense -> [B, output_size] (pretraining;
                    N × [Dense + bias -> ReLU] without BN, as ρMoCo's head)
  LinearClassifier  [B, D] -> L2-normalise -> Dense -> [B, num_classes] logits (linear evaluation)

Both return float32 whatever the dtype policy: their outputs feed a temperature-scaled softmax
(NT-Xent, τ = 0.1) or a cross-entropy, where bfloat16's 8 bits of mantissa show. Both are Keras
layers and keras.ops only: any Keras backend runs them (tests/test_jax_backend.py).
"""

from typing import Sequence

import keras

# Renamed: `batch_norm` is ProjectionHead's and LinearClassifier's on / off argument.
from cvrl_tf import batch_norm as batch_norm_layers

HIDDEN_SIZES = (2048, 2048, 2048)
OUTPUT_SIZE = 128


def l2_normalize(x, epsilon: float = 1e-12):
  """x / max(‖x‖, √epsilon) over the last axis: [B, D] -> [B, D].

  tf.math.l2_normalize's ops in its order, in keras.ops, so TensorFlow computes what it computed
  before; keras.ops.normalize would clamp the norm elsewhere (at epsilon, not √epsilon).
  """
  square_sum = keras.ops.sum(keras.ops.square(x), axis=-1, keepdims=True)  # [B, 1]
  return x * keras.ops.rsqrt(keras.ops.maximum(square_sum, epsilon))


class ProjectionHead(keras.layers.Layer):
  """The MLP projection head of CVRL / SimCLR (SPEC.md §2).

  Args:
    hidden_sizes: width of each [Dense -> BN -> ReLU] layer; () gives a single linear layer.
    output_size: width of the final Dense (no BN, no activation after it).
    bn_momentum, bn_epsilon: of every BN (0.997 and 1e-5 in the reference release); momentum 1
      keeps the moving statistics as they are (a momentum network, cvrl_tf.objectives.momentum).
    sync_batch_norm: synchronise BN batch statistics across replicas (one all-reduce per BN,
      batch_norm.FusedBatchNorm).
    batch_norm: False drops the hidden layers' BNs and gives their Dense a bias instead (the
      ρ-SSL study's MoCo head: BN in MoCo's MLP costs it several points).
    **kwargs: keras.layers.Layer arguments (name, dtype).

  Call: [B, D] -> [B, output_size] float32.
  """

  def __init__(self, hidden_sizes: Sequence[int] = HIDDEN_SIZES, output_size: int = OUTPUT_SIZE,
               bn_momentum: float = 0.997, bn_epsilon: float = 1e-5,
               sync_batch_norm: bool = False, batch_norm: bool = True, **kwargs):
    kwargs.setdefault("name", "projection_head")
    super().__init__(**kwargs)
    hidden_sizes = tuple(hidden_sizes)
    if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in hidden_sizes):
      raise ValueError(f"hidden_sizes must be positive ints, got {hidden_sizes!r}")
    if not isinstance(output_size, int) or isinstance(output_size, bool) or output_size <= 0:
      raise ValueError(f"output_size must be a positive int, got {output_size!r}")
    if not 0.0 <= bn_momentum <= 1.0 or bn_epsilon <= 0.0:
      raise ValueError(f"need 0 <= bn_momentum <= 1 and bn_epsilon > 0, got bn_momentum="
                       f"{bn_momentum!r}, bn_epsilon={bn_epsilon!r}")
    self.hidden_sizes = hidden_sizes
    self.output_size = output_size
    self.bn_momentum = float(bn_momentum)
    self.bn_epsilon = float(bn_epsilon)
    self.sync_batch_norm = bool(sync_batch_norm)
    self.batch_norm = bool(batch_norm)
    # Attributes, not a list: tf.train.Checkpoint does not see into Keras 3's tracked lists.
    for i, size in enumerate(hidden_sizes, start=1):
      # No bias before a BN: it subtracts the batch mean, a bias would be dead weight.
      setattr(self, f"dense{i}", keras.layers.Dense(size, use_bias=not self.batch_norm,
                                                     name=f"dense{i}", dtype=self.dtype_policy))
      if self.batch_norm:
        # Keras's BN, its synchronized statistics through one all-reduce instead of three.
        setattr(self, f"norm{i}", batch_norm_layers.FusedBatchNorm(
            momentum=self.bn_momentum, epsilon=self.bn_epsilon,
            synchronized=self.sync_batch_norm, name=f"norm{i}", dtype=self.dtype_policy))
    self.output_dense = keras.layers.Dense(output_size, name="output_dense", dtype="float32")

  def build(self, input_shape):
    width = input_shape[-1]
    for i, size in enumerate(self.hidden_sizes, start=1):
      getattr(self, f"dense{i}").build((None, width))
      if self.batch_norm:
        getattr(self, f"norm{i}").build((None, size))
      width = size
    self.output_dense.build((None, width))

  def call(self, x, training=None):  # [B, D] -> [B, output_size]
    for i in range(1, len(self.hidden_sizes) + 1):
      x = getattr(self, f"dense{i}")(x)
      if self.batch_norm:
        x = getattr(self, f"norm{i}")(x, training=training)
      x = keras.ops.relu(x)
    return self.output_dense(keras.ops.cast(x, "float32"))

  def compute_output_shape(self, input_shape):
    return (input_shape[0], self.output_size)

  def get_config(self):
    config = super().get_config()
    config.update(hidden_sizes=list(self.hidden_sizes), output_size=self.output_size,
                  bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                  sync_batch_norm=self.sync_batch_norm, batch_norm=self.batch_norm)
    return config


class LinearClassifier(keras.layers.Layer):
  """L2-normalise the (frozen) feature, then one Dense layer: CVRL's linear evaluation head.

  Args:
    num_classes: number of logits.
    kernel_initializer: of the Dense layer; None gives N(0, 0.01²), SimCLR's linear evaluation.
    normalize: L2-normalise the feature first (linear evaluation); fine-tuning heads usually
      do not.
    dropout_rate: dropout on the feature in training mode, after the normalisation.
    batch_norm: standardise every feature dimension with a BatchNormalization without scale and
      offset (MAE's linear probing) after the L2 normalisation: features that share one dominant
      direction then train at ordinary learning rates. Its moving statistics are the probe's own
      (the backbone stays frozen).
    **kwargs: keras.layers.Layer arguments (name, dtype).

  Call: [B, D] -> [B, num_classes] float32 logits.
  """

  def __init__(self, num_classes: int, kernel_initializer=None, normalize: bool = True,
               dropout_rate: float = 0.0, batch_norm: bool = False, **kwargs):
    kwargs.setdefault("name", "linear_classifier")
    super().__init__(**kwargs)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes <= 0:
      raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if not 0 <= dropout_rate < 1:
      raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate!r}")
    self.num_classes = num_classes
    self.normalize = bool(normalize)
    self.dropout_rate = float(dropout_rate)
    self.batch_norm = bool(batch_norm)
    if kernel_initializer is None:
      kernel_initializer = keras.initializers.RandomNormal(stddev=0.01)
    self.kernel_initializer = keras.initializers.get(kernel_initializer)
    self.dropout = keras.layers.Dropout(self.dropout_rate, name="dropout")
    if self.batch_norm:
      self.norm = keras.layers.BatchNormalization(center=False, scale=False, momentum=0.9,
                                                  epsilon=1e-6, name="norm", dtype="float32")
    self.dense = keras.layers.Dense(num_classes, kernel_initializer=self.kernel_initializer,
                                    name="dense", dtype="float32")

  def build(self, input_shape):
    if self.batch_norm:
      self.norm.build((None, input_shape[-1]))
    self.dense.build((None, input_shape[-1]))

  def call(self, x, training=None):  # [B, D] -> [B, num_classes]
    # In float32: the squared norm of a 2048-d bf16 feature rounds coarsely.
    x = keras.ops.cast(x, "float32")
    if self.normalize:
      x = l2_normalize(x)
    if self.batch_norm:
      x = self.norm(x, training=training)
    if self.dropout_rate:
      x = self.dropout(x, training=training)
    return self.dense(x)

  def compute_output_shape(self, input_shape):
    return (input_shape[0], self.num_classes)

  def get_config(self):
    config = super().get_config()
    config.update(num_classes=self.num_classes,
                  kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
                  normalize=self.normalize, dropout_rate=self.dropout_rate,
                  batch_norm=self.batch_norm)
    return config
