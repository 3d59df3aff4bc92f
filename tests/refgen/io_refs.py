# SPDX-License-Identifier: Apache-2.0
"""Reference data for tests/unit/test_io.cpp (files prefixed `io_`).

Writes tensors of every dtype the C++ io supports with Python's own writers -- the `safetensors`
package and NumPy -- and the same tensors with torch.save, so that the C++ readers are checked
against files they did not write. Deterministic (fixed seed); cheap, so it always rewrites.

Usage: python tests/refgen/io_refs.py --out BUILD/tests/data
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict

import numpy as np
import torch
from safetensors.torch import save_file

Tensor = torch.Tensor


def sample_tensors() -> Dict[str, Tensor]:
    g = torch.Generator().manual_seed(1234)
    t: Dict[str, Tensor] = {
        "f32": torch.randn(3, 5, generator=g),
        "f16": torch.randn(2, 3, 4, generator=g).half(),
        "bf16": torch.randn(7, generator=g).bfloat16(),
        "f64": torch.randn(2, 2, generator=g).double(),
        "i64": torch.randint(-(2**40), 2**40, (4, 2), generator=g, dtype=torch.int64),
        "i32": torch.randint(-(2**30), 2**30, (6,), generator=g, dtype=torch.int32),
        "i16": torch.randint(-30000, 30000, (2, 3), generator=g, dtype=torch.int16),
        "i8": torch.randint(-128, 128, (5,), generator=g, dtype=torch.int8),
        "u8": torch.randint(0, 256, (3, 4, 2), generator=g, dtype=torch.uint8),
        "bool": torch.randint(0, 2, (9,), generator=g).bool(),
        "scalar": torch.tensor(2.5, dtype=torch.float32),
        "empty": torch.zeros(0, 384),
        # A name with characters that need no escaping in JSON but are unusual in keys.
        "patch/37x28": torch.randn(1, 2, 3, generator=g),
    }
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", required=True, type=Path)
    out: Path = ap.parse_args().out
    out.mkdir(parents=True, exist_ok=True)

    tensors = sample_tensors()
    metadata = {
        "format": "pytorch",
        "note": "written by safetensors.torch.save_file",
        "utf8": "ünïcødé",
    }
    save_file(tensors, str(out / "io_python.safetensors"), metadata=metadata)
    torch.save(tensors, out / "io_python_expected.pt")

    # NumPy files: C order of several dtypes, a Fortran-order array, a 0-d and a 1-d array.
    npy = {
        "f32": tensors["f32"].numpy(),
        "f16": tensors["f16"].numpy(),
        "f64": tensors["f64"].numpy(),
        "i64": tensors["i64"].numpy(),
        "u8": tensors["u8"].numpy(),
        "bool": tensors["bool"].numpy(),
        "fortran": np.asfortranarray(tensors["u8"].numpy().astype(np.int32)),
        "scalar": np.array(2.5, dtype=np.float32),  # 0-d
        "vector": tensors["i32"].numpy(),
    }
    expected = {}
    for name, array in npy.items():
        np.save(out / f"io_numpy_{name}.npy", array)
        expected[name] = torch.from_numpy(np.array(array, order="C"))  # keeps 0-d arrays 0-d
    torch.save(expected, out / "io_numpy_expected.pt")


if __name__ == "__main__":
    main()
