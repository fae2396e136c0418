"""One fresh process as a user deploys a layer library beside PyTorch: PyTorch's conv (its OpenMP
pool) and the library's conv interleaved; prints JSON: the library's median ms and how TVM's
pool threads are bound.

    python -m tests.support.pool_probe LIBRARY loader|tvm [SECONDS] [alone]
`loader`: convtune's `tuning.deploy.load`; `tvm`: `tvm.runtime.load_module` as the README used to
say (with TVM_NUM_THREADS from the environment); `alone`: no PyTorch calls (how quiet the machine is).
"""

from __future__ import annotations

import glob
import json
import os
import statistics
import sys
import time


def thread_cpus() -> dict[str, str]:
    """Each thread of this process: its allowed cores."""
    out = {}
    for task in glob.glob("/proc/self/task/*"):
        with open(f"{task}/status") as f:
            for line in f:
                if line.startswith("Cpus_allowed_list"):
                    out[os.path.basename(task)] = line.split(":", 1)[1].strip()
    return out


def main() -> int:
    library, how = sys.argv[1], sys.argv[2]
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 1.5
    alone = sys.argv[4:] == ["alone"]
    import numpy as np
    import torch
    import torch.nn.functional as F
    import tvm

    from schedules.reference import random_inputs
    from tuning.deploy.kernel import Kernel, read_sidecar
    from tuning.deploy.loader import load

    torch.set_num_threads(2)
    side = read_sidecar(library)
    before = thread_cpus()
    module = load(library) if how == "loader" else tvm.runtime.load_module(library)
    kernel = Kernel(module, side, tvm.cpu(0))
    data, weight = random_inputs(kernel.workload)
    tensors = kernel.tensors(data, weight)
    kernel.prepare(tensors)
    run = kernel.module[kernel.run_function]
    args = [tensors[a["name"]] for a in kernel.args(kernel.run_function)]
    x = torch.from_numpy(np.ascontiguousarray(data.transpose(0, 3, 1, 2)))
    w = torch.from_numpy(np.ascontiguousarray(weight.transpose(3, 2, 0, 1)))
    pad = kernel.workload.pad[0]
    samples, end = [], time.perf_counter() + seconds
    run(*args)
    while time.perf_counter() < end:
        with torch.no_grad():
            for _ in range(0 if alone else 3):
                F.conv2d(x, w, padding=pad)
        for _ in range(5):
            start = time.perf_counter()
            run(*args)
            samples.append(time.perf_counter() - start)
    pool = {t: c for t, c in thread_cpus().items() if t not in before}
    print(json.dumps({"ms": statistics.median(samples) * 1e3, "calls": len(samples),
                      "tvm_threads": tvm.runtime.num_threads(), "torch_threads": torch.get_num_threads(),
                      "new_threads_cpus": sorted(pool.values())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
