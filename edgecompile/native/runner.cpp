// edgecompile-runner: run a library built by `edgecompile build` on a board without Python.
//
//   edgecompile-runner ARTIFACT_DIR [--input x.npy]... [--seed N] [--output-dir DIR]
//                      [--warmup N] [--repeat N] [--threads N] [--affinity default|big|little]
//
// ARTIFACT_DIR holds manifest.json and the library it names (what `edgecompile build` writes).
// It loads the library as Python's runner does (tvm.runtime.load_module + relax.VirtualMachine
// on the CPU with the pooled allocator, entry function "main"), feeds the .npy inputs (or seeded
// random ones, shaped as the manifest says), writes each output as DIR/output<i>.npy, and
// prints ONE JSON line on stdout: the latencies (median/p90/min over --repeat runs after
// --warmup) and the files written. Errors: one line on stderr, exit 2 (usage) or 1 (run).
//
// It talks to the runtime only through TVM-FFI's C ABI (global functions, objects and tensors),
// never through C++ standard-library types: the runtime carries its own libc++, hidden. So every
// call goes through Call() (the function's safe_call: errors come back as values), never
// Function::operator(), whose fast path lets the runtime's C++ exceptions into this program,
// where another libc++ cannot catch them.
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/optional.h>
#include <tvm/ffi/string.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "program_main.h"

namespace ffi = tvm::ffi;

namespace {

using edgecompile::UsageError;  // exit 2, where any other error exits 1

struct Options {
  std::string artifact;
  std::vector<std::string> inputs;
  std::string output_dir;
  unsigned seed = 0;
  int warmup = 1;
  int repeat = 1;
  int threads = 0;  // 0: the runtime's default (TVM_NUM_THREADS, else the cores)
  int affinity = 0;  // TVM's thread-pool modes: 0 default, 1 big cores, -1 little cores
};

int ParseCount(const std::string& flag, const std::string& text, int minimum) {
  char* end = nullptr;
  long value = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || value < minimum || value > 1000000) {
    throw UsageError(flag + " must be a whole number >= " + std::to_string(minimum) + ", got '" +
                     text + "'");
  }
  return static_cast<int>(value);
}

Options ParseOptions(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--input") {
      options.inputs.push_back(value());
    } else if (arg == "--output-dir") {
      options.output_dir = value();
    } else if (arg == "--seed") {
      options.seed = static_cast<unsigned>(ParseCount(arg, value(), 0));
    } else if (arg == "--warmup") {
      options.warmup = ParseCount(arg, value(), 0);
    } else if (arg == "--repeat") {
      options.repeat = ParseCount(arg, value(), 1);
    } else if (arg == "--threads") {
      options.threads = ParseCount(arg, value(), 1);
    } else if (arg == "--affinity") {
      std::string mode = value();
      if (mode == "default") {
        options.affinity = 0;
      } else if (mode == "big") {
        options.affinity = 1;
      } else if (mode == "little") {
        options.affinity = -1;
      } else {
        throw UsageError("--affinity must be default, big or little, got '" + mode + "'");
      }
    } else if (arg == "-h" || arg == "--help") {
      std::printf(
          "usage: edgecompile-runner ARTIFACT_DIR [--input x.npy]... [--seed N] "
          "[--output-dir DIR] [--warmup N] [--repeat N] [--threads N] "
          "[--affinity default|big|little]\n");
      std::exit(0);
    } else if (!arg.empty() && arg[0] == '-') {
      throw UsageError("unknown option " + arg);
    } else if (options.artifact.empty()) {
      options.artifact = arg;
    } else {
      throw UsageError("one artifact folder only, got '" + arg + "' too");
    }
  }
  if (options.artifact.empty()) throw UsageError("no artifact folder given");
  return options;
}

std::string ReadFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw UsageError("cannot read " + path);
  std::ostringstream text;
  text << file.rdbuf();
  return text.str();
}

ffi::Function Global(const char* name) {
  ffi::Optional<ffi::Function> function = ffi::Function::GetGlobal(name);
  if (!function.has_value()) throw std::runtime_error(std::string("the runtime lacks ") + name);
  return *function;
}

// Calls `function` through its C ABI; an error raised in the runtime becomes one here.
template <typename... Args>
ffi::Any Call(const ffi::Function& function, Args&&... args) {
  ffi::Expected<ffi::Any> result = function.CallExpected<ffi::Any>(std::forward<Args>(args)...);
  if (result.is_err()) {
    ffi::Error error = result.error();
    throw std::runtime_error(std::string(error.kind()) + ": " + std::string(error.message()));
  }
  return result.value();
}

// --- the manifest -------------------------------------------------------------------------------

struct InputSpec {
  std::string name;
  std::vector<int64_t> shape;
  std::string dtype;
};

struct Manifest {
  std::string library;
  std::vector<InputSpec> inputs;
};

ffi::Any Field(const ffi::Map<ffi::Any, ffi::Any>& object, const char* key) {
  auto found = object.find(ffi::String(key));
  if (found == object.end()) throw UsageError(std::string("manifest.json has no '") + key + "'");
  return (*found).second;
}

Manifest ReadManifest(const std::string& folder) {
  ffi::String text(ReadFile(folder + "/manifest.json"));
  ffi::Any parsed = Call(Global("ffi.json.Parse"), text);
  auto object = parsed.try_cast<ffi::Map<ffi::Any, ffi::Any>>();
  if (!object.has_value()) throw UsageError("manifest.json is not a JSON object");
  Manifest manifest;
  manifest.library = std::string(Field(*object, "library").cast<ffi::String>());
  if (manifest.library.find('/') != std::string::npos) {
    throw UsageError("manifest.json names a library outside its folder");
  }
  for (const ffi::Any& entry : Field(*object, "inputs").cast<ffi::Array<ffi::Any>>()) {
    auto spec = entry.cast<ffi::Map<ffi::Any, ffi::Any>>();
    InputSpec input;
    input.name = std::string(Field(spec, "name").cast<ffi::String>());
    input.dtype = std::string(Field(spec, "dtype").cast<ffi::String>());
    for (const ffi::Any& size : Field(spec, "shape").cast<ffi::Array<ffi::Any>>()) {
      input.shape.push_back(size.cast<int64_t>());
    }
    manifest.inputs.push_back(std::move(input));
  }
  return manifest;
}

// --- tensors and .npy files ---------------------------------------------------------------------

struct CpuAlloc {
  void AllocData(DLTensor* tensor) {
    size_t bytes = std::max<size_t>(ffi::GetDataSize(*tensor), 1);
    // 64-byte aligned, as TVM's kernels assume (kAllocAlignment)
    tensor->data = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (tensor->data == nullptr) throw std::runtime_error("out of memory");
  }
  void FreeData(DLTensor* tensor) { std::free(tensor->data); }
};

struct DtypeName {
  const char* name;
  const char* npy;  // numpy's little-endian descr
  DLDataType dtype;
};

const DtypeName kDtypes[] = {
    {"float32", "<f4", {kDLFloat, 32, 1}}, {"float64", "<f8", {kDLFloat, 64, 1}},
    {"float16", "<f2", {kDLFloat, 16, 1}}, {"int8", "|i1", {kDLInt, 8, 1}},
    {"int16", "<i2", {kDLInt, 16, 1}},     {"int32", "<i4", {kDLInt, 32, 1}},
    {"int64", "<i8", {kDLInt, 64, 1}},     {"uint8", "|u1", {kDLUInt, 8, 1}},
    {"bool", "|b1", {kDLBool, 8, 1}},
};

const DtypeName& ByName(const std::string& name) {
  for (const DtypeName& entry : kDtypes) {
    if (name == entry.name) return entry;
  }
  throw UsageError("dtype " + name + " is not supported");
}

const DtypeName& ByDtype(DLDataType dtype) {
  for (const DtypeName& entry : kDtypes) {
    if (entry.dtype.code == dtype.code && entry.dtype.bits == dtype.bits && dtype.lanes == 1) {
      return entry;
    }
  }
  throw std::runtime_error("the model returned a dtype .npy cannot hold");
}

ffi::Tensor Empty(const std::vector<int64_t>& shape, DLDataType dtype) {
  return ffi::Tensor::FromNDAlloc(CpuAlloc(), ffi::Shape(shape.begin(), shape.end()), dtype,
                                  DLDevice{kDLCPU, 0});
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string text = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    text += std::to_string(shape[i]) + (shape.size() == 1 ? "," : i + 1 < shape.size() ? ", " : "");
  }
  return text + ")";
}

// The value of `key` in a .npy header dict, e.g. 'descr': '<f4' -> <f4.
std::string HeaderValue(const std::string& header, const std::string& key) {
  size_t at = header.find("'" + key + "'");
  if (at == std::string::npos) return "";
  at = header.find(':', at);
  size_t start = header.find_first_not_of(" '", at + 1);
  if (header[start] == '(') return header.substr(start, header.find(')', start) - start + 1);
  size_t end = header.find_first_of("',", start);
  return header.substr(start, end - start);
}

ffi::Tensor ReadNpy(const std::string& path, const InputSpec& spec) {
  std::string bytes = ReadFile(path);
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0) {
    throw UsageError(path + " is not a .npy file");
  }
  int major = static_cast<unsigned char>(bytes[6]);
  size_t header_length = major == 1 ? static_cast<unsigned char>(bytes[8]) |
                                          static_cast<unsigned char>(bytes[9]) << 8
                                    : static_cast<unsigned char>(bytes[8]) |
                                          static_cast<unsigned char>(bytes[9]) << 8 |
                                          static_cast<unsigned char>(bytes[10]) << 16 |
                                          static_cast<unsigned char>(bytes[11]) << 24;
  size_t offset = (major == 1 ? 10 : 12) + header_length;
  if (offset > bytes.size()) throw UsageError(path + " is a truncated .npy file");
  std::string header = bytes.substr(0, offset);
  const DtypeName& expected = ByName(spec.dtype);
  std::string descr = HeaderValue(header, "descr");
  std::string shape = HeaderValue(header, "shape");
  if (HeaderValue(header, "fortran_order") != "False") {
    throw UsageError(path + " is in Fortran order; save a C-contiguous array");
  }
  if (descr != expected.npy || shape != ShapeText(spec.shape)) {
    throw UsageError("input '" + spec.name + "' must be " + spec.dtype + " " +
                     ShapeText(spec.shape) + ", " + path + " holds " + descr + " " + shape);
  }
  ffi::Tensor tensor = Empty(spec.shape, expected.dtype);
  size_t size = ffi::GetDataSize(tensor);
  if (bytes.size() - offset != size) throw UsageError(path + " is a truncated .npy file");
  std::memcpy(tensor.data_ptr(), bytes.data() + offset, size);
  return tensor;
}

ffi::Tensor RandomInput(const InputSpec& spec, std::mt19937* generator) {
  const DtypeName& kind = ByName(spec.dtype);
  if (kind.dtype.code != kDLFloat || kind.dtype.bits != 32) {
    throw UsageError("random inputs are float32 only; pass --input for '" + spec.name + "'");
  }
  ffi::Tensor tensor = Empty(spec.shape, kind.dtype);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  float* data = static_cast<float*>(tensor.data_ptr());
  size_t count = ffi::GetDataSize(tensor) / sizeof(float);
  for (size_t i = 0; i < count; ++i) data[i] = normal(*generator);
  return tensor;
}

void WriteNpy(const std::string& path, const ffi::Tensor& tensor) {
  const DLTensor* view = tensor.GetDLTensorPtr();
  std::vector<int64_t> shape(view->shape, view->shape + view->ndim);
  std::string header = std::string("{'descr': '") + ByDtype(view->dtype).npy +
                       "', 'fortran_order': False, 'shape': " + ShapeText(shape) + ", }";
  // magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64
  header.append(63 - (10 + header.size()) % 64, ' ');
  header += '\n';
  std::ofstream file(path, std::ios::binary);
  file.write("\x93NUMPY\x01\x00", 8);
  char length[2] = {static_cast<char>(header.size() & 0xff), static_cast<char>(header.size() >> 8)};
  file.write(length, 2);
  file.write(header.data(), header.size());
  file.write(static_cast<const char*>(view->data) + view->byte_offset,
             static_cast<std::streamsize>(ffi::GetDataSize(*view)));
  if (!file) throw std::runtime_error("cannot write " + path);
}

std::vector<ffi::Tensor> Flatten(const ffi::Any& result) {
  std::vector<ffi::Tensor> tensors;
  if (auto tensor = result.try_cast<ffi::Tensor>()) {
    tensors.push_back(*tensor);
  } else if (auto items = result.try_cast<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& item : *items) {
      for (ffi::Tensor& inner : Flatten(item)) tensors.push_back(inner);
    }
  } else {
    throw std::runtime_error("the model returned something other than tensors");
  }
  return tensors;
}

// --- timing ------------------------------------------------------------------------------------

double Percentile(std::vector<double> values, double fraction) {
  std::sort(values.begin(), values.end());
  double rank = fraction * static_cast<double>(values.size() - 1);
  size_t low = static_cast<size_t>(std::floor(rank));
  size_t high = std::min(low + 1, values.size() - 1);
  return values[low] + (values[high] - values[low]) * (rank - static_cast<double>(low));
}

std::string JsonString(const std::string& text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char escaped[8];
      std::snprintf(escaped, sizeof(escaped), "\\u%04x", c);
      out += escaped;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

int Run(const Options& options) {
  Manifest manifest = ReadManifest(options.artifact);
  if (!options.inputs.empty() && options.inputs.size() != manifest.inputs.size()) {
    throw UsageError("the model takes " + std::to_string(manifest.inputs.size()) +
                     " input(s), got " + std::to_string(options.inputs.size()));
  }
  std::vector<ffi::Any> inputs;
  std::mt19937 generator(options.seed);
  for (size_t i = 0; i < manifest.inputs.size(); ++i) {
    inputs.push_back(options.inputs.empty() ? RandomInput(manifest.inputs[i], &generator)
                                            : ReadNpy(options.inputs[i], manifest.inputs[i]));
  }
  if (options.threads > 0 || options.affinity != 0) {
    Call(Global("runtime.config_threadpool"), options.affinity, options.threads);
  }

  ffi::Function get_function = Global("ffi.ModuleGetFunction");
  auto lookup = [&](const ffi::Any& module, const char* name) {
    auto function =
        Call(get_function, module, ffi::String(name), true).cast<ffi::Optional<ffi::Function>>();
    if (!function.has_value()) {
      throw std::runtime_error(std::string("the library has no ") + name +
                               "; is it a Relax VM library built by edgecompile?");
    }
    return *function;
  };
  ffi::Any library = Call(Global("ffi.ModuleLoadFromFile"),
                          ffi::String(options.artifact + "/" + manifest.library));
  ffi::Any machine = Call(lookup(library, "vm_load_executable"));
  // CPU (kDLCPU = 1), device 0, TVM's pooled allocator (2): as relax.VirtualMachine(lib, cpu())
  Call(lookup(machine, "vm_initialization"), static_cast<int>(kDLCPU), 0, 2);
  ffi::Function entry = lookup(machine, "main");

  // The model's inputs, as its C ABI takes them; `run` calls it and reports its error.
  std::vector<ffi::AnyView> arguments(inputs.begin(), inputs.end());
  ffi::Any result;
  auto* model = const_cast<ffi::FunctionObj*>(entry.get());
  auto run = [&]() {
    result = ffi::Any();
    int code = model->safe_call(model, reinterpret_cast<const TVMFFIAny*>(arguments.data()),
                                static_cast<int32_t>(arguments.size()),
                                reinterpret_cast<TVMFFIAny*>(&result));
    if (code != 0) {
      ffi::Error error = ffi::details::MoveFromSafeCallRaised();
      throw std::runtime_error(std::string(error.kind()) + ": " + std::string(error.message()));
    }
  };
  for (int i = 0; i < options.warmup; ++i) run();
  std::vector<double> milliseconds;
  for (int i = 0; i < options.repeat; ++i) {
    auto start = std::chrono::steady_clock::now();
    run();
    std::chrono::duration<double, std::milli> took = std::chrono::steady_clock::now() - start;
    milliseconds.push_back(took.count());
  }

  std::vector<ffi::Tensor> outputs = Flatten(result);
  std::string written = "[";
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (options.output_dir.empty()) break;
    std::string path = options.output_dir + "/output" + std::to_string(i) + ".npy";
    WriteNpy(path, outputs[i]);
    written += (i ? ", " : "") + JsonString(path);
  }
  written += "]";
  // Every timed run too, so a board's bench has the same statistics as one timed here.
  std::string times = "[";
  for (size_t i = 0; i < milliseconds.size(); ++i) {
    char number[32];
    std::snprintf(number, sizeof(number), "%s%.6f", i ? ", " : "", milliseconds[i]);
    times += number;
  }
  times += "]";
  char timing[256];
  std::snprintf(timing, sizeof(timing),
                "\"median_ms\": %.6f, \"p90_ms\": %.6f, \"min_ms\": %.6f, \"mean_ms\": %.6f",
                Percentile(milliseconds, 0.5), Percentile(milliseconds, 0.9),
                *std::min_element(milliseconds.begin(), milliseconds.end()),
                [&] {
                  double sum = 0;
                  for (double value : milliseconds) sum += value;
                  return sum / static_cast<double>(milliseconds.size());
                }());
  std::printf(
      "{\"runner\": \"edgecompile-runner\", \"library\": %s, \"input\": %s, \"threads\": %d, "
      "\"warmup\": %d, \"repeat\": %d, %s, \"times_ms\": %s, \"outputs\": %s, "
      "\"num_outputs\": %zu}\n",
      JsonString(manifest.library).c_str(),
      options.inputs.empty() ? ("\"random, seed " + std::to_string(options.seed) + "\"").c_str()
                             : "\"files\"",
      options.threads, options.warmup, options.repeat, timing, times.c_str(), written.c_str(),
      outputs.size());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  return edgecompile::GuardedMain("edgecompile-runner",
                                  [&] { return Run(ParseOptions(argc, argv)); });
}
