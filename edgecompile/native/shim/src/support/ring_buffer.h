// edgecompile: the byte queue TVM's RPC endpoint includes as "../../support/ring_buffer.h" (the
// wheel leaves it out). Bytes are appended at the back and consumed from the front; the
// callbacks get one contiguous span, so the queue is kept contiguous (moved to the front of its
// buffer when space runs out) rather than wrapping around.
#ifndef TVM_SUPPORT_RING_BUFFER_H_
#define TVM_SUPPORT_RING_BUFFER_H_

#include <algorithm>
#include <cstring>
#include <vector>

namespace tvm {
namespace support {

class RingBuffer {
 public:
  RingBuffer() : buffer_(kInitialCapacity) {}

  size_t bytes_available() const { return size_; }

  // Room for at least `n` bytes queued at once, the queued ones kept.
  void Reserve(size_t n) { MakeRoom(n > size_ ? n - size_ : 0); }

  // Consumes `size` queued bytes into `data` (the caller checked they are there).
  void Read(void* data, size_t size) {
    size = std::min(size, size_);
    std::memcpy(data, buffer_.data() + head_, size);
    Consume(size);
  }

  void Write(const void* data, size_t size) {
    MakeRoom(size);
    std::memcpy(buffer_.data() + head_ + size_, data, size);
    size_ += size;
  }

  // Hands up to `max_nbytes` queued bytes to `frecv(data, size)`, which returns how many it
  // took; those are consumed.
  template <typename FReceive>
  size_t ReadWithCallback(FReceive frecv, size_t max_nbytes) {
    size_t size = std::min(max_nbytes, size_);
    size_t taken = frecv(buffer_.data() + head_, size);
    Consume(std::min(taken, size));
    return taken;
  }

  // Lets `fsend(data, size)` write up to `max_nbytes` at the back; it returns how many it
  // wrote, and those are queued.
  template <typename FSend>
  size_t WriteWithCallback(FSend fsend, size_t max_nbytes) {
    MakeRoom(max_nbytes);
    size_t written = fsend(buffer_.data() + head_ + size_, max_nbytes);
    size_ += std::min(written, max_nbytes);
    return written;
  }

 private:
  static constexpr size_t kInitialCapacity = 4096;

  void Consume(size_t n) {
    size_ -= n;
    head_ = size_ == 0 ? 0 : head_ + n;
  }

  // At least `extra` free bytes after the queued ones.
  void MakeRoom(size_t extra) {
    if (head_ + size_ + extra <= buffer_.size()) return;
    if (head_ != 0) {
      std::memmove(buffer_.data(), buffer_.data() + head_, size_);
      head_ = 0;
    }
    if (size_ + extra > buffer_.size()) {
      buffer_.resize(std::max(size_ + extra, buffer_.size() * 2));
    }
  }

  std::vector<char> buffer_;
  size_t head_ = 0;
  size_t size_ = 0;
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_RING_BUFFER_H_
