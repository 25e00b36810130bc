// edgecompile: streams over bytes in memory, as TVM's src/support/bytes_io.h provides them to
// the runtime (loading an executable or params from a blob, saving them to a string).
#ifndef TVM_SUPPORT_BYTES_IO_H_
#define TVM_SUPPORT_BYTES_IO_H_

#include <tvm/support/io.h>
#include <tvm/support/serializer.h>

#include <algorithm>
#include <cstring>
#include <string>

namespace tvm {
namespace support {

// Reads a blob the caller keeps alive (a std::string, ffi::Bytes, ...) without copying it.
class BytesInStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  template <typename Blob>
  explicit BytesInStream(const Blob& blob) : data_(blob.data()), size_(blob.size()) {}
  BytesInStream(const char* data, size_t size) : data_(data), size_(size) {}

  size_t Read(void* ptr, size_t size) final {
    size_t count = std::min(size, size_ - position_);
    if (count != 0) std::memcpy(ptr, data_ + position_, count);
    position_ += count;
    return count;
  }
  size_t Write(const void*, size_t) final { return 0; }

 private:
  const char* data_;
  size_t size_;
  size_t position_ = 0;
};

class BytesOutStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  explicit BytesOutStream(std::string* out) : out_(out) {}

  size_t Read(void*, size_t) final { return 0; }
  size_t Write(const void* ptr, size_t size) final {
    out_->append(static_cast<const char*>(ptr), size);
    return size;
  }

 private:
  std::string* out_;
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_BYTES_IO_H_
