// Process start-up tuning of glibc's malloc for training loops.
//
// LibTorch frees a step's activation buffers at the end of each step; with glibc's defaults the
// heap is then trimmed back to the kernel and the next step faults the same pages in again
// (~24% of a training step's time in the kernel at one thread, bench/RESULTS.md "Local training
// throughput"). Keeping up to 256 MB of free heap and serving buffers up to 32 MB (glibc's upper
// limit) from the heap rather than fresh mmaps removes that churn. Call once, first thing in main.
#pragma once

#include <malloc.h>

namespace fedrad {

inline void tune_allocator() {
#if defined(__GLIBC__)
  mallopt(M_TRIM_THRESHOLD, 256 * 1024 * 1024);
  mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
#endif
}

}  // namespace fedrad
