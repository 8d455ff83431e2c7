"""host_buffers: aligned arrays TensorFlow adopts without a copy, reused only once released."""

import threading

import numpy as np
import tensorflow as tf

from cvrl_tf import host_buffers

VIEW = (16, 224, 224, 3)  # a 224² view: 9.6 MB of float32, served by mmap


def _adopted(make) -> bool:
  """Whether TF adopts the array `make()` returns from a numpy_function: a second numpy_function
  sees the first one's array itself, or a copy."""
  made = {}

  def first():
    made["array"] = make()
    made["array"].fill(0.25)
    return made["array"]

  @tf.function
  def run():
    view = tf.numpy_function(first, [], tf.float32)
    return tf.numpy_function(lambda x: np.bool_(x.ctypes.data == made["array"].ctypes.data),
                             [view], tf.bool)
  return bool(run())


def _sixteen_past_alignment(shape):
  """A float32 array 16 bytes past a 64-byte boundary: where glibc puts a large np.empty."""
  raw = np.empty(int(np.prod(shape)) * 4 + 128, np.uint8)
  start = -raw.ctypes.data % 64 + 16
  return raw[start:start + int(np.prod(shape)) * 4].view(np.float32).reshape(shape)


def test_tensorflow_adopts_the_pools_arrays_and_copies_misaligned_ones():
  assert not _adopted(lambda: _sixteen_past_alignment(VIEW))  # the premise
  assert _adopted(lambda: host_buffers.BufferPool().take(VIEW, np.float32))


def test_arrays_are_aligned_in_every_shape_and_dtype():
  pool = host_buffers.BufferPool()
  for shape, dtype in [(VIEW, np.float32), ((5, 7), np.uint8), ((3, 1), np.float64)]:
    array = pool.take(shape, dtype)
    assert array.shape == shape and array.dtype == dtype
    assert array.ctypes.data % 64 == 0 and array.flags.c_contiguous and array.flags.writeable


def test_a_buffer_is_reused_only_when_no_array_of_it_lives():
  pool = host_buffers.BufferPool()
  first = pool.take((4, 8), np.float32)
  address = first.ctypes.data
  second = pool.take((4, 8), np.float32)
  assert second.ctypes.data != address
  part = first[1:]   # a slice keeps the buffer in use, as TF's adopted array would
  del first
  assert pool.take((4, 8), np.float32).ctypes.data not in (address, second.ctypes.data)
  del part
  # The same byte size in another shape and dtype gets the released buffer back.
  again = pool.take((128,), np.uint8)
  assert again.ctypes.data == address
  assert pool.size((4, 8), np.float32) == 3


def test_the_pool_keeps_at_most_its_limit_and_still_serves():
  pool = host_buffers.BufferPool(max_buffers=2)
  held = [pool.take((10,), np.float32) for _ in range(5)]
  assert len({a.ctypes.data for a in held}) == 5 and pool.size((10,), np.float32) == 2
  for i, array in enumerate(held):
    array.fill(i)
  assert [float(a[0]) for a in held] == [0, 1, 2, 3, 4]


def test_tensors_keep_their_buffers_until_released():
  pool = host_buffers.BufferPool()
  made = []

  def fill(value):
    array = pool.take((64, 64), np.float32)
    array.fill(value)
    made.append(array.ctypes.data)
    return array

  @tf.function
  def run():
    kept = tf.numpy_function(lambda: fill(1.0), [], tf.float32)
    with tf.control_dependencies([kept]):  # made while `kept` lives: it is returned below
      other = tf.numpy_function(lambda: fill(2.0), [], tf.float32)
    return kept, other

  kept, other = run()
  assert made[0] != made[1]
  assert float(tf.reduce_min(kept)) == float(tf.reduce_max(kept)) == 1.0
  assert float(tf.reduce_min(other)) == float(tf.reduce_max(other)) == 2.0
  del kept, other
  tf.numpy_function(lambda: np.float32(0), [], tf.float32)  # TF drops its references here
  fill(4.0)
  assert made[-1] in made[:2]  # a released buffer came back


def test_parallel_tf_data_maps_never_share_a_live_buffer():
  # Each element's array holds its own index; a buffer handed out while TF still held it would
  # show another element's values in the batch.
  pool = host_buffers.BufferPool(max_buffers=6)

  def element(i):
    array = pool.take((8, 32, 32, 3), np.float32)
    array.fill(i)
    return array

  dataset = tf.data.Dataset.range(400).map(
      lambda i: tf.ensure_shape(tf.numpy_function(element, [i], tf.float32), (8, 32, 32, 3)),
      num_parallel_calls=8, deterministic=True).batch(16).prefetch(2)
  seen = []
  for batch in dataset:
    values = batch.numpy()
    assert (values == values[:, :1, :1, :1, :1]).all()   # each element one value throughout
    seen.extend(values[:, 0, 0, 0, 0].astype(int))
  assert seen == list(range(400))
  assert pool.size((8, 32, 32, 3), np.float32) <= 6


def test_threads_taking_at_once_get_distinct_buffers():
  pool = host_buffers.BufferPool()
  held, start = [], threading.Barrier(4)

  def take():
    start.wait()
    for _ in range(20):
      held.append(pool.take((256,), np.float32))

  threads = [threading.Thread(target=take) for _ in range(4)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert len({a.ctypes.data for a in held}) == 80
