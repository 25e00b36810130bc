// What edgecompile-runner and edgecompile-rpc-server share around their work: how a failure
// becomes their ONE line on stderr and their exit code, so both report errors alike (the Python
// side reads that line: native/execute.py, device/tunnel.py).
//
// Both programs reach the runtime only through TVM-FFI's C ABI, so every error caught here was
// raised in the program itself (its own libc++), never inside the runtime's hidden one.
#ifndef EDGECOMPILE_NATIVE_PROGRAM_MAIN_H_
#define EDGECOMPILE_NATIVE_PROGRAM_MAIN_H_

#include <tvm/ffi/error.h>

#include <cstdio>
#include <exception>
#include <stdexcept>
#include <string>

namespace edgecompile {

// A usage error (exit 2) as opposed to a failure while running (exit 1).
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Returns what `body()` returns; an error it throws becomes "PROGRAM: message" on stderr and
// exit 2 (a UsageError) or 1 (anything else, a TVM error with its kind first).
template <typename Body>
int GuardedMain(const char* program, Body&& body) {
  try {
    return body();
  } catch (const UsageError& error) {
    std::fprintf(stderr, "%s: %s\n", program, error.what());
    return 2;
  } catch (const tvm::ffi::Error& error) {
    std::fprintf(stderr, "%s: %s: %s\n", program, std::string(error.kind()).c_str(),
                 std::string(error.message()).c_str());
    return 1;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "%s: %s\n", program, error.what());
    return 1;
  }
}

}  // namespace edgecompile

#endif  // EDGECOMPILE_NATIVE_PROGRAM_MAIN_H_
