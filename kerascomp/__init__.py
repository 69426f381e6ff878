"""kerascomp: physically smaller and faster Keras CNNs for TFLite/LiteRT.

Public API::

    small = kerascomp.clone_compressed(model, method="fga", target_flops=0.25)   # or "correlation", "l1", ...
    plan = kerascomp.plan(model, method="collaborative", target_flops=0.5, data=(x, y))
    small = kerascomp.clone_compressed(model, plan=plan)                                # any method's plan
    kerascomp.register(MyMethod())                                                      # a new method
    small.fit(...)
    kerascomp.export_tflite(small, "small.tflite")
    qat = kerascomp.quantize_aware(small); qat.fit(...); kerascomp.export_tflite(qat, "small_int8.tflite")
    kerascomp.benchmark_tflite("small.tflite")
"""
from kerascomp import startup

startup.quiet_tensorflow_startup()  # the kerascomp command only: before anything imports TensorFlow

from kerascomp.api import Compressed, CompressionWarning, clone_compressed, compress, strip
from kerascomp.bench.host import BenchmarkResult, benchmark_tflite, compare_tflite
from kerascomp.bench.latency import LatencyTable, latency_table
from kerascomp.bench.layer_report import LayerRow, ModelReport, report
from kerascomp.cost import CostReport, cost
from kerascomp.distill import distiller
from kerascomp.errors import (
                              BenchmarkError,
                              BudgetError,
                              CompressionError,
                              ExportError,
                              InvalidArgumentError,
                              InvalidWeightsError,
                              UnsupportedModelError,
)
from kerascomp.export.qat import quantize_aware
from kerascomp.export.tflite import ExportResult, ParityWarning, export_tflite
from kerascomp.graph.flavour import default_keras as _default_keras
from kerascomp.layers import custom_objects, layers_for
from kerascomp.methods.auto import AutoOptions
from kerascomp.methods.base import LayerPlan, LayerRecord, Plan
from kerascomp.methods.collaborative import CollaborativeOptions
from kerascomp.methods.fga import FGAOptions
from kerascomp.methods.inputs import DEFAULT_TARGET_FLOPS
from kerascomp.methods.joint_svd import SVDOptions
from kerascomp.methods.pruning import PruneOptions
from kerascomp.methods.registry import Context, Method, register
from kerascomp.methods.registry import names as method_names
from kerascomp.methods.tucker import TuckerOptions
from kerascomp.planner import plan
from kerascomp.rounds import RoundsResult, prune_in_rounds

__version__ = "0.1.0"

# Register kerascomp's layers with this process's default Keras so .keras files load after `import kerascomp`.
layers_for(_default_keras())

__all__ = [
    "clone_compressed", "compress", "plan", "distiller", "Plan", "LayerPlan", "LayerRecord", "DEFAULT_TARGET_FLOPS",
    "register", "Method", "Context", "method_names", "FGAOptions", "PruneOptions", "SVDOptions", "TuckerOptions",
    "CollaborativeOptions", "AutoOptions", "latency_table", "LatencyTable", "report", "ModelReport", "LayerRow", "strip", "prune_in_rounds", "RoundsResult", "export_tflite", "quantize_aware", "benchmark_tflite", "compare_tflite", "cost",
    "custom_objects", "layers_for", "Compressed", "CostReport", "ExportResult", "BenchmarkResult",
    "CompressionError", "InvalidArgumentError", "UnsupportedModelError", "InvalidWeightsError", "BudgetError",
    "ExportError", "BenchmarkError", "CompressionWarning", "ParityWarning",
]
