// edgecompile: the binary-stream interface TVM's runtime sources include from
// <tvm/support/io.h>. The apache-tvm wheel ships the runtime's sources but not this header, so
// the native runtime build supplies its own: raw Read/Write bytes plus typed Read/Write through
// Serializer<T> (specialized in serializer.h and by TVM's own headers).
#ifndef TVM_SUPPORT_IO_H_
#define TVM_SUPPORT_IO_H_

#include <cstddef>
#include <cstdint>

namespace tvm {
namespace support {

template <typename T, typename = void>
struct Serializer {
  static constexpr bool enabled = false;
};

class Stream {
 public:
  virtual size_t Read(void* ptr, size_t size) = 0;
  virtual size_t Write(const void* ptr, size_t size) = 0;
  virtual ~Stream() = default;

  template <typename T>
  void Write(const T& value) {
    static_assert(Serializer<T>::enabled, "no Serializer<T> for this type");
    Serializer<T>::Write(this, value);
  }

  template <typename T>
  bool Read(T* value) {
    static_assert(Serializer<T>::enabled, "no Serializer<T> for this type");
    return Serializer<T>::Read(this, value);
  }

  template <typename T>
  void WriteArray(const T* values, size_t count) {
    for (size_t i = 0; i < count; ++i) Write<T>(values[i]);
  }

  template <typename T>
  bool ReadArray(T* values, size_t count) {
    for (size_t i = 0; i < count; ++i) {
      if (!Read<T>(values + i)) return false;
    }
    return true;
  }
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_IO_H_
