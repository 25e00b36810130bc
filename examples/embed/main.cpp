// Run a model built by `edgecompile build` from your own C++ program: the smallest example.
//
//   ./embed squeezenet1_1.so 1 3 224 224     (the library, then its input shape)
//
// It loads the library, starts TVM's Relax VM on the CPU, runs "main" on an input of ones and
// prints the output's shape and first values. Copy it; the Makefile next to it cross-builds it
// for a board. Only TVM-FFI's headers and libtvm_runtime.so are needed (no Python on the board).
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace ffi = tvm::ffi;

// Where input tensors live: plain aligned host memory, freed with the tensor.
struct HostMemory {
  void AllocData(DLTensor* tensor) {
    tensor->data = std::aligned_alloc(64, (ffi::GetDataSize(*tensor) + 63) / 64 * 64);
  }
  void FreeData(DLTensor* tensor) { std::free(tensor->data); }
};

// Every call goes through TVM-FFI's C ABI (CallExpected: an error comes back as a value): your
// program may use any C++ standard library, the runtime keeps its own. (Function::operator()
// may let the runtime's C++ exceptions into your program, where your libc++ cannot catch them.)
template <typename... Args>
ffi::Any Call(const ffi::Function& function, Args&&... args) {
  ffi::Expected<ffi::Any> result = function.CallExpected<ffi::Any>(std::forward<Args>(args)...);
  if (result.is_err()) throw std::runtime_error(std::string(result.error().message()));
  return result.value();
}

ffi::Function Global(const char* name) { return ffi::Function::GetGlobal(name).value(); }

ffi::Function GetFunction(const ffi::Any& module, const char* name) {
  return Call(Global("ffi.ModuleGetFunction"), module, ffi::String(name), true)
      .cast<ffi::Optional<ffi::Function>>()
      .value();
}

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s MODEL.so DIM [DIM...]\n", argv[0]);
    return 2;
  }
  try {
    ffi::Any library = Call(Global("ffi.ModuleLoadFromFile"), ffi::String(argv[1]));
    ffi::Any vm = Call(GetFunction(library, "vm_load_executable"));
    Call(GetFunction(vm, "vm_initialization"), static_cast<int>(kDLCPU), 0, 2);  // CPU, pooled
    ffi::Function model = GetFunction(vm, "main");

    std::vector<int64_t> shape;
    for (int i = 2; i < argc; ++i) shape.push_back(std::atoll(argv[i]));
    ffi::Tensor input = ffi::Tensor::FromNDAlloc(HostMemory(), ffi::Shape(shape.begin(), shape.end()),
                                                 DLDataType{kDLFloat, 32, 1}, DLDevice{kDLCPU, 0});
    float* data = static_cast<float*>(input.data_ptr());
    for (size_t i = 0; i < ffi::GetDataSize(input) / sizeof(float); ++i) data[i] = 1.0f;

    ffi::Tensor output = Call(model, input).cast<ffi::Tensor>();  // several outputs: ffi::Array
    const DLTensor* view = output.GetDLTensorPtr();
    std::printf("output shape:");
    for (int i = 0; i < view->ndim; ++i) std::printf(" %lld", static_cast<long long>(view->shape[i]));
    std::printf("\nfirst values:");
    const float* values = static_cast<const float*>(output.data_ptr());
    for (int i = 0; i < 5 && i < view->shape[view->ndim - 1]; ++i) std::printf(" %g", values[i]);
    std::printf("\n");
  } catch (const std::exception& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
  return 0;
}
