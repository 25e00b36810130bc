// edgecompile: libgcc's 32-bit division helpers, exported by the armv7 runtime.
//
// TVM compiles integer division for a generic armv7 CPU (no divide instruction assumed) into
// calls to __divsi3 and friends. With Python on the board, libgcc_s provides them to every
// library the process loads; a Python-free process has no libgcc_s, and zig's compiler-rt names
// them __aeabi_* only. (Its __modsi3 and __umodsi3 exist but are hidden, and a hidden
// definition hides ours too, so those two cannot be provided this way.) The runtime itself is
// built for Cortex-A7, which divides in hardware: these compile to one instruction each,
// never to a call of themselves.
#if defined(__arm__)
#define EDGECOMPILE_EXPORT extern "C" __attribute__((visibility("default")))

EDGECOMPILE_EXPORT int __divsi3(int a, int b) { return a / b; }
EDGECOMPILE_EXPORT unsigned __udivsi3(unsigned a, unsigned b) { return a / b; }
#endif
