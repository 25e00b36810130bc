// edgecompile: base64 streams for the runtime's tensor <-> JSON hooks (tensor.cc), written for
// the native runtime because the wheel does not ship TVM's src/support/base64.h.
#ifndef TVM_SUPPORT_BASE64_H_
#define TVM_SUPPORT_BASE64_H_

#include <tvm/support/io.h>

#include <cctype>
#include <cstdint>
#include <string>

namespace tvm {
namespace support {

namespace base64 {
inline const char* Alphabet() {
  return "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
}
inline int Value(int c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}
}  // namespace base64

// Encodes what is written into base64 text on `out`; Finish() writes the last group.
class Base64OutStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  explicit Base64OutStream(Stream* out) : out_(out) {}

  size_t Read(void*, size_t) final { return 0; }
  size_t Write(const void* ptr, size_t size) final {
    const auto* bytes = static_cast<const uint8_t*>(ptr);
    for (size_t i = 0; i < size; ++i) {
      group_[filled_++] = bytes[i];
      if (filled_ == 3) Emit();
    }
    return size;
  }
  void Finish() {
    if (filled_ != 0) Emit();
  }

 private:
  void Emit() {
    const char* alphabet = base64::Alphabet();
    uint32_t bits = (group_[0] << 16) | (filled_ > 1 ? group_[1] << 8 : 0) |
                    (filled_ > 2 ? group_[2] : 0);
    char text[4] = {alphabet[(bits >> 18) & 63], alphabet[(bits >> 12) & 63],
                    filled_ > 1 ? alphabet[(bits >> 6) & 63] : '=',
                    filled_ > 2 ? alphabet[bits & 63] : '='};
    out_->Write(text, 4);
    filled_ = 0;
  }

  Stream* out_;
  uint8_t group_[3] = {0, 0, 0};
  int filled_ = 0;
};

// Decodes base64 text read from `in`; InitPosition() skips leading whitespace.
class Base64InStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  explicit Base64InStream(Stream* in) : in_(in) {}

  void InitPosition() {}
  size_t Write(const void*, size_t) final { return 0; }
  size_t Read(void* ptr, size_t size) final {
    auto* bytes = static_cast<uint8_t*>(ptr);
    size_t done = 0;
    while (done < size) {
      if (available_ == used_ && !Refill()) break;
      bytes[done++] = decoded_[used_++];
    }
    return done;
  }

 private:
  bool Refill() {
    int values[4];
    int count = 0;
    char c;
    while (count < 4 && in_->Read(&c, 1) == 1) {
      if (std::isspace(static_cast<unsigned char>(c))) continue;
      values[count++] = c == '=' ? -2 : base64::Value(c);
    }
    if (count < 4 || values[0] < 0 || values[1] < 0) return false;
    uint32_t bits = (values[0] << 18) | (values[1] << 12) | (values[2] >= 0 ? values[2] << 6 : 0) |
                    (values[3] >= 0 ? values[3] : 0);
    decoded_[0] = static_cast<uint8_t>(bits >> 16);
    decoded_[1] = static_cast<uint8_t>(bits >> 8);
    decoded_[2] = static_cast<uint8_t>(bits);
    available_ = values[2] < 0 ? 1 : values[3] < 0 ? 2 : 3;
    used_ = 0;
    return true;
  }

  Stream* in_;
  uint8_t decoded_[3] = {0, 0, 0};
  int available_ = 0;
  int used_ = 0;
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_BASE64_H_
