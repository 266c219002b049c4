// The core's effective clock, measured: a VM's /proc/cpuinfo reports the nominal frequency,
// not the boost clock the kernels actually run at, and the analytic latency model counts
// cycles (python/hybrid_pruning/targets.py).
#ifndef TFLITE_OPS_KERNELS_CLOCK_H_
#define TFLITE_OPS_KERNELS_CLOCK_H_

namespace hybrid_sparse {

// Cycles per nanosecond of the calling thread's core, timed on a chain of dependent integer
// adds (one cycle each on every core this project targets); 0 where no timing loop exists
// for the architecture.
double MeasureClockGhz();

}  // namespace hybrid_sparse

#endif  // TFLITE_OPS_KERNELS_CLOCK_H_
