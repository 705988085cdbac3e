"""Reproducible speed, memory and FLOP figures on the machine it runs on (``tools/benchmark.py``).

The top floor of the package (it may import every other part, nothing imports it):

- :mod:`~cellseg_d2.benchmark.machine`: resident memory (also of worker processes), CUDA sync,
  the matmul peak.
- :mod:`~cellseg_d2.benchmark.training`: conversion, loader, CellTrainer vs DefaultTrainer.
- :mod:`~cellseg_d2.benchmark.inference`: network / model call / end-to-end predict per image,
  FLOPs, the CUDA summary.
- :mod:`~cellseg_d2.benchmark.stream`: memory of a long streamed prediction run.
- :mod:`~cellseg_d2.benchmark.slides`: memory and speed of whole-slide prediction on synthetic
  slides (:mod:`~cellseg_d2.benchmark.synthetic_slide`: the slide and its disc finder).
- :mod:`~cellseg_d2.benchmark.report`: the whole run in order, and the printed table.
- :mod:`~cellseg_d2.benchmark.accuracy`: each config trained for a time budget, its test split
  predicted and scored (AP, AP50, PQ, mPQ, AJI) in one table (``--accuracy``).
"""

from cellseg_d2.benchmark.machine import matmul_peak_gflops
from cellseg_d2.benchmark.report import format_benchmark, run_benchmark
from cellseg_d2.benchmark.slides import measure_slide_benchmark
from cellseg_d2.benchmark.stream import measure_stream_memory

__all__ = [
    "format_benchmark",
    "matmul_peak_gflops",
    "measure_slide_benchmark",
    "measure_stream_memory",
    "run_benchmark",
]
