"""Hypothesis strategies for NIfTI files with random shapes, dtypes and corrupted headers."""

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import nibabel as nib
import numpy as np

DTYPES = st.sampled_from([np.uint8, np.int16, np.int32, np.float32, np.float64, np.complex64])

# Keyword arguments of `write_fuzzed_nifti`.
NIFTI_FILES = st.fixed_dictionaries({
    "data": hnp.arrays(DTYPES, hnp.array_shapes(min_dims=3, max_dims=4, max_side=4)
                       | hnp.array_shapes(min_dims=1, max_dims=5, max_side=3)),
    "pixdim": st.lists(st.floats(width=32), min_size=3, max_size=3),
    "codes": st.tuples(st.integers(-1, 5), st.integers(-1, 5)),
    "scaling": st.tuples(st.floats(width=32), st.floats(width=32)),
    "truncate": st.none() | st.integers(0, 400),
})


def write_fuzzed_nifti(path, data, pixdim, codes, scaling, truncate):
  """Saves `data`, then overwrites header fields on disk, bypassing nibabel's checks.

  Zooms (`pixdim`), qform/sform `codes` and `scaling` (slope, intercept) are set
  in the raw header; the file is cut after `truncate` bytes unless it is None.
  Returns `path`.
  """
  nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
  raw = bytearray(path.read_bytes())
  header = np.frombuffer(raw[:348], dtype=nib.nifti1.header_dtype).copy()
  header["pixdim"][0, 1:4] = pixdim
  header["qform_code"], header["sform_code"] = codes
  header["scl_slope"], header["scl_inter"] = scaling
  raw[:348] = header.tobytes()
  path.write_bytes(bytes(raw[:truncate] if truncate is not None else raw))
  return path
