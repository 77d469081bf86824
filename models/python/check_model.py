"""Loads a fedrad model with plain PyTorch and prints its logits for a raw float32 input.

    python3 check_model.py global.pt input.bin N      # input: N x 1 x S x S float32, row-major

Used by tests/apps to check that PyTorch in Python gives the same outputs as fedrad.
"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fedrad_models import Classifier  # noqa: E402


def main():
    model_path, input_path, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    meta = json.load(open(os.path.splitext(model_path)[0] + ".json"))
    model = Classifier(**meta["model"])
    model.load_state_dict(torch.load(model_path))
    model.eval()
    size = meta["data"]["input_size"]
    x = torch.from_numpy(np.fromfile(input_path, dtype=np.float32).reshape(n, 1, size, size))
    with torch.no_grad():
        print(json.dumps(model(x).squeeze(1).tolist()))


if __name__ == "__main__":
    main()
