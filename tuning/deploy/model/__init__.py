"""One library for a whole model: convtune's kernels for its convs, TVM for everything else.

    plan      per distinct conv workload, what to build (the best record; cold weights considered)
    build     the graph's conv chains replaced by the kernels, the rest scheduled, one library + sidecar
    runtime   the sidecar read, the library run, its outputs checked against ONNX Runtime / PyTorch

The names below are the package's; import them from `tuning.deploy.model`.
"""

from .build import (
    MODEL_RTOL,
    MODEL_SIDECAR_VERSION,
    QUANT_STEPS,
    build_model,
    default_schedules,
    export_model,
    loop_nest_schedule,
    model_sidecar,
    replace_convs,
    tolerance,
)
from .plan import COLD_REPEATS, LayerPlan, cold_choice, plan
from .runtime import (
    DEGENERATE_SCALE,
    ModelCheck,
    ModelLibrary,
    compare_outputs,
    first_diverging_layer,
    is_model_sidecar,
    layer_choices,
    random_model_inputs,
    read_model_sidecar,
    reference_outputs,
    untuned_warning,
)

__all__ = ["COLD_REPEATS", "DEGENERATE_SCALE", "MODEL_RTOL", "MODEL_SIDECAR_VERSION", "QUANT_STEPS", "LayerPlan",
           "ModelCheck", "ModelLibrary", "build_model", "cold_choice", "compare_outputs", "default_schedules", "export_model",
           "first_diverging_layer", "is_model_sidecar", "layer_choices", "loop_nest_schedule", "model_sidecar", "plan",
           "random_model_inputs", "read_model_sidecar", "reference_outputs", "replace_convs", "tolerance",
           "untuned_warning"]
