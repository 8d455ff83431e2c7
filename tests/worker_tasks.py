"""Decode tasks that misbehave, for the builder's worker-pool tests.

They live in their own module (imports: os, time) because spawned workers import the module of
the function they run; a test module would drag TensorFlow into every worker.
"""

import os
import time


def hang(path, **kwargs):
  """A decode that never finishes (a stuck network read, a pathological file)."""
  del path, kwargs
  time.sleep(3600)


def crash(path, **kwargs):
  """A decoder that takes its process down (a segfault in a codec)."""
  del path, kwargs
  os._exit(11)
