// Programmatic dependent launch (PDL, sm_90): the launcher (src/cuda/module.ts, Kernel.launch) lets each kernel of
// ours be scheduled while the kernel before it on the stream is still running, so its launch and its CTAs' placement
// overlap that kernel's tail instead of following it (docs/PDL.md). That is only correct because every kernel entry
// starts with MM_GRID_DEPENDENCY(), which test/kernel-entries.test.ts checks for each __global__ in src/kernels:
//   griddepcontrol.wait              blocks until every grid this one depends on has completed and its memory
//                                    operations are visible (a no-op when the launch had no programmatic dependency);
//   griddepcontrol.launch_dependents lets the next kernel of the stream be scheduled now. It comes after the wait, so
//                                    at most one kernel waits ahead of the one running.
// Before the wait a kernel may only do what cannot observe or disturb the previous kernel's memory (a prefetch of
// constant data into L2 is the one such use: L2 is where device memory is coherent).
#pragma once

#ifdef MEGAMOE_EMU
#define MM_GRID_DEPENDENCY() ((void)0)  // the CPU emulator runs launches one after another
#else
#define MM_GRID_DEPENDENCY() asm volatile("griddepcontrol.wait;\n\tgriddepcontrol.launch_dependents;" ::: "memory")
#endif
