#!/usr/bin/env bash
# bench/.venv-flower: Flower and pydicom (from PyPI) over Debian's python3-torch, for the peers in
# bench/ only. numpy stays Debian's (torch 1.13 is built against numpy 1.x).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=bench/.venv-flower
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import flwr, pydicom, pylibjpeg, torch' 2>/dev/null; then
  /usr/bin/python3 -c 'import torch' || { echo "Debian's python3-torch is needed (apt-get install python3-torch)" >&2; exit 1; }
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
  np=$(/usr/bin/python3 -c 'import numpy; print(numpy.__version__)')
  # pylibjpeg-libjpeg: JPEG lossless (site-b) and JPEG-LS (site-d); pylibjpeg-rle: RLE (site-c).
  "$VENV/bin/pip" install -q "numpy==$np" flwr==1.8.0 pydicom pylibjpeg pylibjpeg-libjpeg pylibjpeg-rle
fi
