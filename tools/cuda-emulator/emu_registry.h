// Kernel registration for the CPU emulator: EMU_KERNEL(name) after a kernel's definition records a function that
// unpacks cuLaunchKernel's `void **params` (one pointer per parameter, each at that parameter's value) into a typed
// call, so the launchers in src/ drive the emulated kernels exactly as they drive the real ones.
#pragma once
#include <cstddef>
#include <type_traits>
#include <utility>

namespace emu {
struct KernelEntry {
  void (*invoke)(void** params);
};

template <auto F, typename... A, std::size_t... I>
void invoke_impl(void** p, void (*)(A...), std::index_sequence<I...>) {
  F(*reinterpret_cast<std::remove_cv_t<A>*>(p[I])...);
}
template <auto F, typename... A>
void invoke(void** p, void (*f)(A...)) { invoke_impl<F>(p, f, std::index_sequence_for<A...>{}); }
}  // namespace emu

void emu_register(const char* name, emu::KernelEntry e);

#define EMU_KERNEL(fn)                                                                               \
  namespace {                                                                                        \
  struct emu_reg_##fn {                                                                              \
    emu_reg_##fn() { emu_register(#fn, emu::KernelEntry{[](void** p) { emu::invoke<fn>(p, fn); }}); } \
  } emu_reg_instance_##fn;                                                                           \
  }
