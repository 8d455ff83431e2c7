"""Arrays that a `tf.numpy_function` hands to TensorFlow: aligned, and reused once released.

TensorFlow adopts a `tf.numpy_function`'s NumPy result as the tensor's buffer, without a copy,
only when its data starts on a 64-byte boundary (Eigen's alignment). NumPy puts a large array 16
bytes past a page (glibc's mmap'ed chunk header), so each such result was copied once more.

Every fresh array of that size is also new memory from the kernel: a 16 × 224² float32 view is 9.6
MB, ~2,350 page faults whose pages the kernel zeroes at first touch. `take` hands out a buffer that
TensorFlow has let go instead: a buffer is free when no array made from it is alive any more. NumPy
collapses every view's `base` to the array that owns the memory, so the owner's reference count
is the pool's own reference plus one per live array made from it, whoever holds that array
(TensorFlow's tensor holds the array it adopted; TensorFlow drops it when the tensor dies, at the
latest at its next `numpy_function` call).
"""

import sys
import threading

import numpy as np

_ALIGNMENT = 64
# Buffers kept per byte size: enough for the views that tf.data's parallel map calls hold at once
# (each call's view is copied into its batch as soon as it is made, then released).
_MAX_BUFFERS = 32


def _references(owners: list, index: int) -> int:
  return sys.getrefcount(owners[index])


def _owner(nbytes: int) -> np.ndarray:
  return np.empty(nbytes + _ALIGNMENT, np.uint8)


def _aligned_view(owner: np.ndarray, shape, dtype: np.dtype) -> np.ndarray:
  start = -owner.ctypes.data % _ALIGNMENT
  nbytes = int(np.prod(shape)) * dtype.itemsize
  return owner[start:start + nbytes].view(dtype).reshape(shape)


class BufferPool:
  """Aligned arrays, each made from a buffer of its byte size that no live array uses.

  Thread-safe: tf.data runs one `numpy_function` per map thread, and a thread switch can come
  between any two bytecodes.
  """

  def __init__(self, max_buffers: int = _MAX_BUFFERS):
    self._max_buffers = max_buffers  # per byte size
    self._owners = {}  # byte size -> [owner]
    self._lock = threading.Lock()
    # What `_references` returns for an owner only the pool holds (the count depends on the
    # interpreter's version: measured, not assumed).
    self._free = _references([_owner(0)], 0)

  def take(self, shape, dtype) -> np.ndarray:
    """An uninitialised, 64-byte aligned array of `shape` and `dtype`."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    with self._lock:
      owners = self._owners.setdefault(nbytes, [])
      for i in range(len(owners)):
        if _references(owners, i) == self._free:
          return _aligned_view(owners[i], shape, dtype)
      owner = _owner(nbytes)
      if len(owners) < self._max_buffers:
        owners.append(owner)
      return _aligned_view(owner, shape, dtype)

  def size(self, shape, dtype) -> int:
    """How many buffers the pool keeps for arrays of `shape` and `dtype`."""
    return len(self._owners.get(int(np.prod(shape)) * np.dtype(dtype).itemsize, []))
