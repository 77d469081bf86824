"""pydicom + numpy version of bench/dicom_ingest.cpp: the same files (labels.csv order), the same
decode + preprocess (MONOCHROME1 inverted over the stored range, rescale when present, bilinear
resize to 28x28 with half-pixel centres as torch's align_corners=False, per-image min-max to
[-1, 1]). Single-threaded. Prints one JSON line like the C++ bench."""
import csv
import json
import os
import sys
import time

import numpy as np
import pydicom

OUT = 28


def files_of(site):
    with open(os.path.join(site, "labels.csv"), newline="") as f:
        rows = list(csv.reader(f))
    return [os.path.join(site, r[0].strip()) for r in rows[1:] if r and r[0].strip()]


def resize_weights(n_in, n_out):
    scale = n_in / n_out
    src = np.maximum((np.arange(n_out) + 0.5) * scale - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (src - lo).astype(np.float32)


_cache = {}


def resize(img):
    h, w = img.shape
    if (h, w) not in _cache:
        _cache[(h, w)] = (resize_weights(h, OUT), resize_weights(w, OUT))
    (y0, y1, fy), (x0, x1, fx) = _cache[(h, w)]
    top = img[y0][:, x0] * (1 - fx) + img[y0][:, x1] * fx
    bot = img[y1][:, x0] * (1 - fx) + img[y1][:, x1] * fx
    return top * (1 - fy)[:, None] + bot * fy[:, None]


def preprocess(path):
    ds = pydicom.dcmread(path)
    a = ds.pixel_array.astype(np.float32)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        a = float((1 << int(ds.BitsStored)) - 1) - a
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    if slope != 1 or intercept != 0:
        a = a * slope + intercept
    r = resize(a)
    lo, hi = r.min(), r.max()
    r = (r - lo) / max(hi - lo, 1e-6)
    return (r - 0.5) / 0.5


def main():
    repeat, limit = 1, 0
    args = sys.argv[1:]
    while args[:1] in (["--repeat"], ["--files"]):
        if args[0] == "--repeat":
            repeat = int(args[1])
        else:
            limit = int(args[1])
        args = args[2:]
    files = [f for site in args for f in files_of(site)]
    if limit > 0:  # the first `limit` files, cycling through the list (as dicom_ingest_bench --files)
        files = [files[i % len(files)] for i in range(limit)]
    nbytes = sum(os.path.getsize(f) for f in files)
    best, checksum = 1e30, 0.0
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = [preprocess(f) for f in files]
        best = min(best, time.perf_counter() - t0)
        checksum = float(sum(float(o.sum(dtype=np.float64)) for o in out))
    print(json.dumps({"tool": "pydicom", "threads": 1, "images": len(files), "bytes": nbytes,
                      "seconds": round(best, 4), "images_per_s": round(len(files) / best, 1),
                      "mb_per_s": round(nbytes / 1e6 / best, 2), "checksum": round(checksum, 4),
                      "pydicom": pydicom.__version__, "numpy": np.__version__}))


if __name__ == "__main__":
    main()
