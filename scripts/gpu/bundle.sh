#!/usr/bin/env bash
# Run on a Debian machine with network (this project's CI/dev machines), before going to a GPU node
# that lacks fedrad's Debian libraries and has no network: downloads the -dev packages fedrad
# builds against and the shared libraries they need into .gpu-deps/ (git-ignored), which
# scripts/gpu/run.sh unpacks into a private prefix on the node. LibTorch, CUDA, cuDNN and NCCL are
# not bundled: the node has them (PyTorch's).
#   scripts/gpu/bundle.sh        -> .gpu-deps/*.deb and a size line
set -euo pipefail
cd "$(dirname "$0")/../.."
DIRECT=(libdcmtk-dev libgdcm-dev libinsighttoolkit5-dev libzmq3-dev cppzmq-dev libsodium-dev libzstd-dev
        libyaml-cpp-dev nlohmann-json3-dev libspdlog-dev libfmt-dev libcli11-dev libcpp-httplib-dev
        libgtest-dev libgmock-dev libbenchmark-dev)
# Everything they pull in, minus what any CUDA image has (C/C++ runtime, compilers, Python).
mapfile -t CLOSURE < <(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
    --no-replaces --no-enhances "${DIRECT[@]}" | grep -E '^[a-z0-9]' | sort -u |
  grep -Ev '^(libc6|libc6-dev|libc-dev-bin|libgcc|libstdc\+\+|gcc|g\+\+|cpp|python3|perl|debconf|dpkg|tar|coreutils|libcrypt|linux-libc-dev|zlib1g$|libtorch|libcuda|nvidia|catch2|<)' |
  # Not needed to build or run fedrad (the carry to a GPU node is limited to 64 MiB): Kerberos,
  # curl's variants, ICU's tools, Fortran HDF5 bindings, documentation.
  grep -Ev '(krb5|kadm5|kdb5|gssrpc|gssapi|curl|icu-devtools|libicu-dev|libnss3|fortran|gfortran|hdf5-helpers|comerr|-doc$)')
rm -rf .gpu-deps && mkdir -p .gpu-deps
(cd .gpu-deps && apt-get download "${CLOSURE[@]}" >/dev/null)
grep -qxF '/.gpu-deps/' .git/info/exclude 2>/dev/null || echo '/.gpu-deps/' >> .git/info/exclude
echo "bundle: $(ls .gpu-deps | wc -l) packages, $(du -sh .gpu-deps | cut -f1) in .gpu-deps (carry it: run(carry=['.gpu-deps']))"
