"""A fresh process that loads libraries through `tuning.deploy.load` and says what the runtime got.

    python -m tests.support.loader_child STEP...      STEP: load:PATH | touch:PATH
Prints JSON: every warning, TVM's thread count, the cores each new thread (TVM's pool) may use,
the process's cores, and each layer library's largest error against the numpy reference.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

from .pool_probe import thread_cpus


def main() -> int:
    before = thread_cpus()
    import numpy as np
    import tvm
    from tvm import relax

    from schedules.reference import random_inputs, conv2d_reference
    from tuning.deploy import load
    from tuning.deploy.kernel import Kernel, read_sidecar

    modules = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in sys.argv[1:]:
            verb, path = step.split(":", 1)
            if verb == "touch":  # the file rewritten in place, as a rebuild does
                data = open(path, "rb").read()
                os.unlink(path)
                open(path, "wb").write(data)
                os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
            else:
                modules.append((path, load(path)))
    errors = {}
    for path, module in modules:
        if json.load(open(os.path.splitext(path)[0] + ".json")).get("kind") == "model":
            vm = relax.VirtualMachine(module, tvm.cpu())
            side = json.load(open(os.path.splitext(path)[0] + ".json"))
            x = np.random.default_rng(0).uniform(-1, 1, side["inputs"][0]["shape"]).astype("float32")
            errors[path] = float(np.isfinite(vm["main"](tvm.runtime.tensor(x)).numpy()).all())
            continue
        kernel = Kernel(module, read_sidecar(path), tvm.cpu(0))
        data, weight = random_inputs(kernel.workload)
        tensors = kernel.tensors(data, weight)
        kernel.call("conv2d", tensors)
        expected = conv2d_reference(kernel.workload, data, weight)
        errors[path] = float(np.abs(tensors["out"].numpy() - expected).max() / np.abs(expected).max())
    print(json.dumps({"warnings": [str(w.message) for w in caught], "tvm_threads": tvm.runtime.num_threads(),
                      "pool_cpus": sorted(c for t, c in thread_cpus().items() if t not in before),
                      "process_cpus": sorted(os.sched_getaffinity(0)), "errors": errors}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
