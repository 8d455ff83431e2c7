"""Apache Beam's pipeline options for the dataset builder: offline defaults, checked early.

Beam's "DirectRunner" (2.68 and later) tries Prism first, a runner that downloads a binary when it
starts: offline, that fails and Beam falls back to a runner without worker processes. Without a
runner of the user's, or for "DirectRunner", the build asks for the FnApiRunner instead (the
DirectRunner's own batch engine, nothing to download) with one worker process per core.

Imports Apache Beam but not TensorFlow: `build_tfrecords.py` checks the options in a second,
before it reads or decodes anything.
"""

import contextlib
import io
import shlex
from typing import Sequence

from apache_beam.options.pipeline_options import DirectOptions
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.options.pipeline_options import StandardOptions

# Runner names that mean "this machine": run as the FnApiRunner (no Prism, no download).
_LOCAL_RUNNERS = (None, "DirectRunner", "SwitchingDirectRunner", "FnApiRunner")


def pipeline_options(text: str, num_workers: int) -> PipelineOptions:
  """PipelineOptions from `--beam_pipeline_options` text (shell syntax).

  Without a runner (or with DirectRunner): the FnApiRunner in `multi_processing` mode with
  `num_workers` worker processes, unless `text` sets --direct_running_mode /
  --direct_num_workers itself.

  Raises:
    ValueError naming --beam_pipeline_options and what was wrong (unbalanced quotes, a word that
    is not an option, an unknown option, a bad value).
  """
  flag = "--beam_pipeline_options"
  try:
    args = shlex.split(text or "")
  except ValueError as e:
    raise ValueError(f"{flag}={text!r} is not shell syntax ({e})") from None
  stray = [a for a in args if not a.startswith("--")]
  if stray:
    raise ValueError(f"{flag}: {stray[0]!r} is not an option; give Beam options as "
                     "--name=value, e.g. \"--runner=DataflowRunner --project=P --region=R\"")
  options = _parse(flag, args)
  given = options.get_all_options(drop_default=True)
  if given.get("runner") in _LOCAL_RUNNERS:
    defaults = ["--direct_running_mode=multi_processing", f"--direct_num_workers={num_workers}"]
    args = defaults + args + ["--runner=FnApiRunner"]   # the last of an option wins
    options = _parse(flag, args)
  return options


def _parse(flag: str, args: Sequence[str]) -> PipelineOptions:
  options = PipelineOptions(list(args))
  errors = io.StringIO()
  try:
    # argparse prints its whole usage and exits on a bad value: keep its last line.
    with contextlib.redirect_stderr(errors):
      known = options.get_all_options()
  except SystemExit:
    lines = errors.getvalue().strip().splitlines() or ["error: invalid value"]
    raise ValueError(f"{flag}: {lines[-1].split('error: ', 1)[-1]}") from None
  unknown = sorted(set(options.get_all_options(retain_unknown_options=True)) - set(known))
  if unknown:
    raise ValueError(f"{flag}: unknown Beam option(s) {', '.join('--' + u for u in unknown)} "
                     "(a typo? Beam's options are the PipelineOptions classes' arguments)")
  return options


def runs_in_this_process(options: PipelineOptions) -> bool:
  """Whether the DoFns run in this process (the FnApiRunner's `in_memory` mode)."""
  return (options.view_as(StandardOptions).runner == "FnApiRunner"
          and options.view_as(DirectOptions).direct_running_mode == "in_memory")
