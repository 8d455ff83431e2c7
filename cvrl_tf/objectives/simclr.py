"""CVRL's objective, which the ρ-SSL study calls ρSimCLR: NT-Xent over every pair of clips.

Each of the ρ(ρ − 1)/2 pairs of a video's clips is a positive pair; the negatives are the other
videos' clips in the global batch (gathered from every replica). At ρ = 2 it is CVRL's loss.
"""

from cvrl_tf import losses
from cvrl_tf.objectives import base


class SimCLR(base.Objective):
  """losses.rho_nt_xent on the online projections, at train.temperature."""

  summary_names = ("loss/contrastive", "contrast/accuracy", "contrast/entropy",
                   base.SPREAD)

  def loss_on(self, projections, targets, step) -> base.StepOutputs:
    del targets, step
    out = losses.rho_nt_xent(projections, self.config.train.temperature)
    return base.StepOutputs(out.loss, (out.contrast_accuracy, out.contrast_entropy,
                                       base.spread(projections)))
