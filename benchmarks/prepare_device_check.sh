#!/usr/bin/env bash
# Prepares what the device check needs on a lent GPU machine, which reaches no registry:
# the wheels its image lacks (ml-collections, tensorboardX; Python 3.12 there) in .whl/
# and the corpus in .device_data/, both git-ignored through .git/info/exclude. Run it
# here, in the repository root, before the one device call (benchmarks/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
for path in /.whl/ /.device_data/; do
  grep -qxF "$path" .git/info/exclude || echo "$path" >> .git/info/exclude
done
mkdir -p .whl .device_data
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "ml-collections==1.1.0" "tensorboardX==2.6.4"
data="${CHARRNN_DATA_DIR:-../shared/data}"
cp "$data/tinyshakespeare.txt" .device_data/
ls -l .whl .device_data
