#!/usr/bin/env bash
# The checks a session with a lent GPU machine runs in one call (about 4-5 minutes on an H200 machine):
#   the whole test suite with the GPU visible (the CLI's default device is then the GPU), the GA's
#   fused kernel against its loop, and the replicates' GPU check. Full logs go to $OUT (or ./device_out).
#
#   bash benchmarks/device_check.sh            # on the device machine, from the repository root
#
# The device machine has no ticketlab install: the sources are used from src/. Packages it lacks
# (torch-pruning, ray) make their tests skip. Exit status: that of the test suite.
set -u
out="${OUT:-device_out}"
mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1
python3 - <<'PY' 2>&1 | tee "$out/environment.txt"
import platform, torch
print("torch", torch.__version__, "| cuda", torch.version.cuda, "| gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else None,
      "| cpu capability", torch.backends.cpu.get_cpu_capability(), "| python", platform.python_version())
try:
    import triton
    print("triton", triton.__version__)
except Exception as e:
    print("triton: not importable", e)
PY
workers=$(( $(nproc) > 12 ? 12 : $(nproc) ))
timeout 300 python3 -m pytest -q -n "$workers" -p no:cacheprovider -rf --tb=short tests > "$out/suite.log" 2>&1
suite=$?
grep -E "^(FAILED|ERROR)|passed|failed" "$out/suite.log" | tail -40
timeout 60 python3 benchmarks/ga_population.py --device cuda --repeats 20 2>&1 | tee "$out/ga_population.log" | tail -3
timeout 60 python3 benchmarks/replicates_device_check.py --device cuda > "$out/replicates_device_check.log" 2>&1
tail -5 "$out/replicates_device_check.log"
exit $suite
