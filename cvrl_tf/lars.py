"""LARS, the large-batch optimizer of SimCLR and CVRL, as a Keras 3 optimizer; and which variables it decays.

  LARS                  keras.optimizers.Optimizer: momentum SGD whose step per variable is scaled
                        by a trust ratio η · ‖w‖ / ‖g + wd · w‖, with coupled weight decay
  kernel_variables      model -> the conv / dense kernels: decayed and adapted
  non_kernel_variables  model -> everything else trainable (BN γ/β, biases): excluded

Variables are chosen by object (the layer attribute that holds them), never by name: Keras 3
variable paths (`projection_head/dense1/kernel`) differ from TF2-Keras names (`dense1/kernel:0`),
and a name regex that silently matches nothing decays BN γ.

The reference release's optimizer (SPEC.md §2), plain SGD momentum 0.9 without Nesterov, is
`keras.optimizers.SGD(schedule, momentum=0.9, nesterov=False)` with the L2 penalty in the loss:
`losses.weight_decay_loss(kernel_variables(model), wd)`.
"""

from typing import Iterable, List, Optional

import keras
import tensorflow as tf

# Layer attributes that hold a kernel (Dense, EinsumDense, Conv*, convolutions.FoldedConv3D,
# SeparableConv*): the variables the reference release selects with `'kernel' in v.name`.
KERNEL_ATTRIBUTES = ("kernel", "depthwise_kernel", "pointwise_kernel")


def _layers(model: keras.layers.Layer) -> List[keras.layers.Layer]:
  # Keras 3 has no public recursive layer walk; `_flatten_layers` is what `Layer.weights` uses.
  # pylint: disable-next=protected-access
  return list(model._flatten_layers(include_self=True, recursive=True))


def kernel_variables(model: keras.layers.Layer) -> List[keras.Variable]:
  """The trainable kernels of `model`'s layers (conv and dense), in `trainable_variables` order.

  These get weight decay and LARS adaptation in the CVRL recipe (SPEC.md §2).
  """
  kernels = set()
  for layer in _layers(model):
    for attribute in KERNEL_ATTRIBUTES:
      # Dense's and Conv's `kernel` is a property over the variable `_kernel` (with LoRA it
      # returns a tensor): look at the variable first.
      value = getattr(layer, "_" + attribute, None)
      if not isinstance(value, keras.Variable):
        value = getattr(layer, attribute, None)
      if isinstance(value, keras.Variable):
        kernels.add(id(value))
  return [v for v in model.trainable_variables if id(v) in kernels]


def non_kernel_variables(model: keras.layers.Layer) -> List[keras.Variable]:
  """The trainable variables that are not kernels: BN γ/β, biases, any other weight.

  These are what LARS must `exclude` from decay and adaptation (SPEC.md §2), as SimCLR does.
  """
  kernels = {id(v) for v in kernel_variables(model)}
  return [v for v in model.trainable_variables if id(v) not in kernels]


@keras.saving.register_keras_serializable(package="cvrl_tf")
class LARS(keras.optimizers.Optimizer):
  """Layer-wise Adaptive Rate Scaling (You, Gitman & Ginsburg 2017), as in SimCLR.

  For each variable w with gradient g (already summed over replicas), step t:

    1) g ← g + wd · w                       (decay coupled to the gradient; not for excluded w)
    2) r = η · ‖w‖ / ‖g‖, or 1 when ‖w‖ = 0 or ‖g‖ = 0, or for excluded w, or when η is None
    3) v ← m · v + lr_t · r · g             (classic momentum: the learning rate inside)
    4) w ← w − v

  With η = None and wd = 0 this is exactly `keras.optimizers.SGD(momentum=m)` (Keras stores −v).
  The decay is not Keras's decoupled `weight_decay` (w ← w − lr · wd · w, AdamW-style): here it
  enters the trust ratio, as in SimCLR's LARS that CVRL used.

  Args:
    learning_rate: float or `keras.optimizers.schedules.LearningRateSchedule`.
    momentum: m in [0, 1).
    weight_decay: wd ≥ 0 (1e-6 in the CVRL recipe).
    trust_coefficient: η > 0 (0.001 in CVRL and SimCLR), or None for no layer adaptation.
    exclude: variables that get neither decay nor adaptation, matched by object (for a model,
      `non_kernel_variables(model)`). Not part of `get_config`: variables are not serialisable;
      after `from_config`, call `exclude_variables` again.
    **kwargs: keras.optimizers.Optimizer arguments (name, clipnorm, global_clipnorm, ...).

  Under tf.distribute, create it and call `optimizer.build(model.trainable_variables)` inside
  `strategy.scope()` before the first traced step: like every Keras 3 optimizer, it cannot create
  its slots inside `strategy.run` in a tf.function. Call `apply_gradients` in the replica context
  with each replica's gradients: Keras sums them over replicas before `update_step`.
  """

  def __init__(self, learning_rate=0.32, momentum: float = 0.9, weight_decay: float = 1e-6,
               trust_coefficient: Optional[float] = 0.001,
               exclude: Optional[Iterable[keras.Variable]] = None, name: str = "lars", **kwargs):
    if not 0.0 <= momentum < 1.0:
      raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if weight_decay is None or not weight_decay >= 0.0:
      raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if trust_coefficient is not None and not trust_coefficient > 0.0:
      raise ValueError(
          f"trust_coefficient must be > 0, or None for no adaptation, got {trust_coefficient!r}")
    # `weight_decay` goes to the base class too, so that it appears in get_config; the base
    # class's decoupled decay is switched off in `_apply_weight_decay` below.
    super().__init__(learning_rate=learning_rate, weight_decay=float(weight_decay), name=name,
                     **kwargs)
    self.momentum = float(momentum)
    self.trust_coefficient = None if trust_coefficient is None else float(trust_coefficient)
    self._excluded = set()
    self.exclude_variables(exclude or ())

  def exclude_variables(self, variables: Iterable[keras.Variable]) -> None:
    """Excludes `variables` (by object) from weight decay and adaptation.

    Call it before the first `apply_gradients`: a traced step has the choice baked in.
    """
    for variable in variables:
      # `_var_key` maps a distributed variable and each of its per-replica components to the
      # same key, which is what `update_step` sees under tf.distribute.
      self._excluded.add(self._var_key(variable))

  def is_excluded(self, variable) -> bool:
    """Whether `variable` gets neither decay nor adaptation."""
    return self._var_key(variable) in self._excluded

  def exclude_from_weight_decay(self, var_list=None, var_names=None):
    """Refuses the base-class API: it matches names and would leave adaptation on."""
    raise ValueError(
        "LARS excludes variables from weight decay and adaptation together, by object: pass "
        "them as LARS(exclude=...) or call exclude_variables(variables), e.g. with "
        f"non_kernel_variables(model); got var_list={var_list!r}, var_names={var_names!r}")

  def _apply_weight_decay(self, variables):
    # Keras applies `weight_decay` decoupled (w ← w − lr · wd · w) before update_step; LARS adds
    # it to the gradient inside update_step instead, so the base-class decay must not also run.
    del variables

  def build(self, variables):
    """Creates one momentum slot per variable."""
    if self.built:
      return
    super().build(variables)
    self.momentums = self.add_optimizer_variables(variables, "momentum")

  def update_step(self, gradient, variable, learning_rate):
    """One LARS step for one variable; on a per-replica component under tf.distribute."""
    dtype = variable.dtype
    gradient = tf.cast(gradient, dtype)
    learning_rate = tf.cast(learning_rate, dtype)
    velocity = self.momentums[self._get_variable_index(variable)]
    excluded = self.is_excluded(variable)  # Python bool: decided at trace time
    value = tf.convert_to_tensor(variable)
    if self.weight_decay and not excluded:
      gradient = gradient + tf.cast(self.weight_decay, dtype) * value  # 1)
    if self.trust_coefficient is not None and not excluded:
      w_norm = tf.norm(value)
      g_norm = tf.norm(gradient)
      trust_ratio = tf.where(  # 2)
          w_norm > 0,
          tf.where(g_norm > 0, tf.cast(self.trust_coefficient, dtype) * w_norm / g_norm, 1.0),
          tf.ones_like(w_norm))
      learning_rate = learning_rate * trust_ratio
    self.assign(velocity, tf.cast(self.momentum, dtype) * velocity + learning_rate * gradient)  # 3)
    self.assign_sub(variable, velocity)  # 4)

  def get_config(self):
    config = super().get_config()
    config.update({"momentum": self.momentum, "trust_coefficient": self.trust_coefficient})
    return config
