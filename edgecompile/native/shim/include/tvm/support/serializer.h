// edgecompile: Serializer<T> for the types TVM's runtime writes into an executable (numbers,
// enums, strings, vectors, pairs, maps, ffi containers, DLDataType, DLDevice). The wheel does not
// ship TVM's header; this one reads and writes the same little-endian layout: a length as
// uint64 before every sequence, numbers in their native width. Every board we build for is
// little-endian, so no byte swapping is needed (checked at compile time).
#ifndef TVM_SUPPORT_SERIALIZER_H_
#define TVM_SUPPORT_SERIALIZER_H_

#include <dlpack/dlpack.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/endian.h>
#include <tvm/ffi/string.h>
#include <tvm/support/io.h>

#include <cstdint>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

static_assert(TVM_FFI_IO_NO_ENDIAN_SWAP, "the native runtime is built for little-endian CPUs only");

namespace tvm {
namespace support {

template <typename T>
struct Serializer<T, std::enable_if_t<std::is_arithmetic_v<T>>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const T& value) { strm->Write(&value, sizeof(T)); }
  static bool Read(Stream* strm, T* value) { return strm->Read(value, sizeof(T)) == sizeof(T); }
};

template <typename T>
struct Serializer<T, std::enable_if_t<std::is_enum_v<T>>> {
  static constexpr bool enabled = true;
  using Underlying = std::underlying_type_t<T>;
  static void Write(Stream* strm, const T& value) {
    Serializer<Underlying>::Write(strm, static_cast<Underlying>(value));
  }
  static bool Read(Stream* strm, T* value) {
    Underlying raw;
    if (!Serializer<Underlying>::Read(strm, &raw)) return false;
    *value = static_cast<T>(raw);
    return true;
  }
};

namespace detail {
inline bool ReadLength(Stream* strm, uint64_t* length) {
  return Serializer<uint64_t>::Read(strm, length);
}
inline bool ReadChars(Stream* strm, std::string* text) {
  uint64_t length;
  if (!ReadLength(strm, &length)) return false;
  text->resize(static_cast<size_t>(length));
  return length == 0 || strm->Read(&(*text)[0], text->size()) == text->size();
}
}  // namespace detail

template <>
struct Serializer<std::string> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::string& text) {
    Serializer<uint64_t>::Write(strm, static_cast<uint64_t>(text.size()));
    if (!text.empty()) strm->Write(text.data(), text.size());
  }
  static bool Read(Stream* strm, std::string* text) { return detail::ReadChars(strm, text); }
};

template <>
struct Serializer<ffi::String> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const ffi::String& text) {
    Serializer<uint64_t>::Write(strm, static_cast<uint64_t>(text.size()));
    if (text.size() != 0) strm->Write(text.data(), text.size());
  }
  static bool Read(Stream* strm, ffi::String* text) {
    std::string chars;
    if (!detail::ReadChars(strm, &chars)) return false;
    *text = ffi::String(std::move(chars));
    return true;
  }
};

template <typename T>
struct Serializer<std::vector<T>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::vector<T>& items) {
    Serializer<uint64_t>::Write(strm, static_cast<uint64_t>(items.size()));
    if constexpr (std::is_arithmetic_v<T>) {
      if (!items.empty()) strm->Write(items.data(), sizeof(T) * items.size());
    } else {
      for (const T& item : items) Serializer<T>::Write(strm, item);
    }
  }
  static bool Read(Stream* strm, std::vector<T>* items) {
    uint64_t length;
    if (!detail::ReadLength(strm, &length)) return false;
    items->resize(static_cast<size_t>(length));
    if constexpr (std::is_arithmetic_v<T>) {
      size_t bytes = sizeof(T) * items->size();
      return bytes == 0 || strm->Read(items->data(), bytes) == bytes;
    } else {
      for (T& item : *items) {
        if (!Serializer<T>::Read(strm, &item)) return false;
      }
      return true;
    }
  }
};

template <typename A, typename B>
struct Serializer<std::pair<A, B>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::pair<A, B>& pair) {
    Serializer<A>::Write(strm, pair.first);
    Serializer<B>::Write(strm, pair.second);
  }
  static bool Read(Stream* strm, std::pair<A, B>* pair) {
    return Serializer<A>::Read(strm, &pair->first) && Serializer<B>::Read(strm, &pair->second);
  }
};

template <typename K, typename V>
struct Serializer<std::unordered_map<K, V>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::unordered_map<K, V>& map) {
    Serializer<std::vector<std::pair<K, V>>>::Write(strm, {map.begin(), map.end()});
  }
  static bool Read(Stream* strm, std::unordered_map<K, V>* map) {
    std::vector<std::pair<K, V>> pairs;
    if (!Serializer<std::vector<std::pair<K, V>>>::Read(strm, &pairs)) return false;
    map->clear();
    map->insert(pairs.begin(), pairs.end());
    return true;
  }
};

template <typename T>
struct Serializer<ffi::Array<T>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const ffi::Array<T>& items) {
    Serializer<uint64_t>::Write(strm, static_cast<uint64_t>(items.size()));
    for (const T& item : items) Serializer<T>::Write(strm, item);
  }
  static bool Read(Stream* strm, ffi::Array<T>* items) {
    uint64_t length;
    if (!detail::ReadLength(strm, &length)) return false;
    *items = ffi::Array<T>();
    for (uint64_t i = 0; i < length; ++i) {
      T item;
      if (!Serializer<T>::Read(strm, &item)) return false;
      items->push_back(std::move(item));
    }
    return true;
  }
};

template <typename K, typename V>
struct Serializer<ffi::Map<K, V>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const ffi::Map<K, V>& map) {
    Serializer<uint64_t>::Write(strm, static_cast<uint64_t>(map.size()));
    for (const auto& entry : map) {
      Serializer<K>::Write(strm, entry.first);
      Serializer<V>::Write(strm, entry.second);
    }
  }
  static bool Read(Stream* strm, ffi::Map<K, V>* map) {
    uint64_t length;
    if (!detail::ReadLength(strm, &length)) return false;
    *map = ffi::Map<K, V>();
    for (uint64_t i = 0; i < length; ++i) {
      K key;
      V value;
      if (!Serializer<K>::Read(strm, &key) || !Serializer<V>::Read(strm, &value)) return false;
      map->Set(std::move(key), std::move(value));
    }
    return true;
  }
};

template <>
struct Serializer<DLDataType> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const DLDataType& dtype) {
    Serializer<uint8_t>::Write(strm, dtype.code);
    Serializer<uint8_t>::Write(strm, dtype.bits);
    Serializer<uint16_t>::Write(strm, dtype.lanes);
  }
  static bool Read(Stream* strm, DLDataType* dtype) {
    return Serializer<uint8_t>::Read(strm, &dtype->code) &&
           Serializer<uint8_t>::Read(strm, &dtype->bits) &&
           Serializer<uint16_t>::Read(strm, &dtype->lanes);
  }
};

template <>
struct Serializer<DLDevice> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const DLDevice& device) {
    Serializer<int32_t>::Write(strm, static_cast<int32_t>(device.device_type));
    Serializer<int32_t>::Write(strm, device.device_id);
  }
  static bool Read(Stream* strm, DLDevice* device) {
    int32_t type = 0;
    if (!Serializer<int32_t>::Read(strm, &type)) return false;
    device->device_type = static_cast<DLDeviceType>(type);
    return Serializer<int32_t>::Read(strm, &device->device_id);
  }
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_SERIALIZER_H_
