// edgecompile: the scratch arena TVM's RPC endpoint includes as "../../support/arena.h" (the
// wheel leaves it out). The endpoint allocates a request's argument buffers from it and
// recycles them all once the request is answered, so a list of blocks freed together is enough.
#ifndef TVM_SUPPORT_ARENA_H_
#define TVM_SUPPORT_ARENA_H_

#include <cstddef>
#include <memory>
#include <vector>

namespace tvm {
namespace support {

class Arena {
 public:
  // Uninitialized storage for `count` values of T (the endpoint fills it), aligned as any type.
  template <typename T>
  T* allocate_(size_t count = 1) {
    size_t units = (count * sizeof(T) + sizeof(std::max_align_t) - 1) / sizeof(std::max_align_t);
    blocks_.emplace_back(new std::max_align_t[units == 0 ? 1 : units]);
    return reinterpret_cast<T*>(blocks_.back().get());
  }

  void RecycleAll() { blocks_.clear(); }

 private:
  std::vector<std::unique_ptr<std::max_align_t[]>> blocks_;
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_ARENA_H_
