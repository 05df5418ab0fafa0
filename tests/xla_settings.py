"""How the suite's XLA compiles, and the per-compile options that give a real run's
program back where a test reads what XLA fused.

The suite sets XLA_FLAGS (`SUITE_FLAGS`, see conftest.py) for itself and every process it
starts: eight virtual CPU devices, LLVM's optimizations off and XLA's older CPU fusion
emitters. The emitters fuse some ops differently, so a compiled program's temporary
bytes move (the tiny Llama's train step: 4,156,448 instead of 4,089,856; the gradient of
tests/test_lean_backward.py: 96 bytes more); a test that asserts `memory_analysis()`
temporaries compiles with `REAL_RUN` added to its compiler options, which restores the
fusion a real run gets (checked: the same bytes as under XLA's defaults in both).
"""

SUITE_FLAGS = (
    "--xla_force_host_platform_device_count=8"
    " --xla_backend_optimization_level=0"
    " --xla_cpu_use_fusion_emitters=false"
)
REAL_RUN = {"xla_cpu_use_fusion_emitters": True}
